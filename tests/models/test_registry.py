"""The model registry: immutable checksummed versions, spec-hash checks, atomic alias moves."""

import json
import multiprocessing
import os
import stat

import numpy as np
import pytest
import xgboost as xgb

from models import registry as registry_mod
from models.registry import (
    IntegrityError,
    LocalStorage,
    Registry,
    RegistryError,
    SpecMismatchError,
    Storage,
    open_storage,
)

SPEC = "a" * 64
OTHER_SPEC = "b" * 64
NAMES = ["x0", "x1", "x2"]


def _booster(seed: int, rounds: int = 4) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    return xgb.train({"objective": "binary:logistic", "tree_method": "hist", "nthread": 1, "seed": seed},
                     xgb.DMatrix(x, label=y, feature_names=NAMES), num_boost_round=rounds)


def _register(registry: Registry, seed: int, **extra) -> str:
    meta = {"feature_names": NAMES, "params": {"max_depth": 6}, "test_metrics": {"average_precision": 0.5 + seed / 100},
            "data": {"split": {"train": ["2018-07-25", "2018-07-31"]}}}
    return registry.register(_booster(seed), meta, spec_hash=SPEC, **extra)


@pytest.fixture
def registry(tmp_path):
    return Registry(LocalStorage(tmp_path / "reg"))


def test_register_writes_an_immutable_checksummed_version(registry, tmp_path):
    version = _register(registry, 1, extra_files={"report.html": b"<html></html>"})
    assert registry.versions() == [version]
    meta = registry.metadata(version)
    assert meta["version"] == version and meta["feature_spec_hash"] == SPEC and meta["format"] == "xgboost-ubj"
    assert set(meta["files"]) == {"model.ubj", "report.html"}
    assert meta["created_at"].endswith("+00:00") and meta["xgboost_version"] == xgb.__version__
    assert set(meta["code_version"]) == {"package", "git_commit"}
    assert meta["params"] == {"max_depth": 6} and meta["test_metrics"]["average_precision"] == 0.51
    folder = tmp_path / "reg" / "versions" / version
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "metadata.json.sha256", "model.ubj", "report.html"]
    # the model is XGBoost's own UBJSON, not a pickle
    assert (folder / "model.ubj").read_bytes()[:1] == b"{"
    # files are read-only and the storage refuses to overwrite them
    assert not os.stat(folder / "model.ubj").st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    with pytest.raises(FileExistsError):
        registry.storage.create(f"versions/{version}/model.ubj", b"other")
    assert registry.verify(version)["report.html"] == b"<html></html>"


def test_loaded_model_predicts_like_the_original(registry):
    booster = _booster(2)
    version = registry.register(booster, {"feature_names": NAMES}, spec_hash=SPEC)
    model = registry.load(version, expected_spec_hash=SPEC)
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    expected = booster.predict(xgb.DMatrix(x, feature_names=NAMES))
    np.testing.assert_array_equal(model.score_many(x), expected.astype(np.float64))
    assert model.feature_names == tuple(NAMES)
    with pytest.raises(ValueError, match="3 columns"):
        model.score_many(x[:, :2])


def test_load_verifies_checksums(registry, tmp_path):
    version = _register(registry, 3)
    path = tmp_path / "reg" / "versions" / version / "model.ubj"
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=rf"version {version}: model.ubj does not match its recorded sha256"):
        registry.load(version, expected_spec_hash=SPEC)


def test_edited_metadata_is_detected(registry, tmp_path):
    version = _register(registry, 4)
    path = tmp_path / "reg" / "versions" / version / "metadata.json"
    os.chmod(path, 0o644)
    meta = json.loads(path.read_text())
    meta["test_metrics"]["average_precision"] = 0.99
    path.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="metadata.json does not match its recorded sha256"):
        registry.load(version, expected_spec_hash=SPEC)


def test_spec_hash_mismatch_is_refused_with_a_clear_error(registry):
    version = _register(registry, 5)
    with pytest.raises(SpecMismatchError, match=r"trained on features with spec hash aaaaaaaaaaaa…, but the features "
                                                r"here have spec hash bbbbbbbbbbbb…"):
        registry.load(version, expected_spec_hash=OTHER_SPEC)


def test_register_validates_its_inputs(registry):
    with pytest.raises(ValueError, match="spec_hash must be a 64-character"):
        registry.register(_booster(0), {"feature_names": NAMES}, spec_hash="abc")
    with pytest.raises(ValueError, match="feature_names"):
        registry.register(_booster(0), {}, spec_hash=SPEC)
    with pytest.raises(ValueError, match="reserved"):
        registry.register(_booster(0), {"feature_names": NAMES}, spec_hash=SPEC, extra_files={"model.ubj": b""})


def test_incomplete_versions_are_not_listed(registry):
    registry.storage.create("versions/20180101T000000.000Z-deadbeef00/model.ubj", b"{}")
    assert registry.versions() == []
    with pytest.raises(RegistryError, match="no complete model version"):
        registry.load("20180101T000000.000Z-deadbeef00", expected_spec_hash=SPEC)


def test_promote_and_rollback(registry):
    v1, v2, v3 = (_register(registry, s) for s in (1, 2, 3))
    with pytest.raises(RegistryError, match="no version is in production yet"):
        registry.load(expected_spec_hash=SPEC)
    registry.promote(v1)
    registry.promote(v2)
    registry.promote(v3)
    assert registry.load(expected_spec_hash=SPEC).version == v3
    assert registry.rollback()["version"] == v2
    assert registry.rollback()["version"] == v1
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    state = registry.alias()
    assert state["version"] == v1 and state["previous"] == []
    assert [e["action"] for e in state["log"]] == ["promote"] * 3 + ["rollback"] * 2
    with pytest.raises(RegistryError, match="no complete model version 'nope'"):
        registry.promote("nope")


def test_promote_refuses_a_corrupted_version(registry, tmp_path):
    version = _register(registry, 6)
    path = tmp_path / "reg" / "versions" / version / "model.ubj"
    os.chmod(path, 0o644)
    path.write_bytes(b"{}")
    with pytest.raises(IntegrityError):
        registry.promote(version)
    assert registry.alias()["version"] is None


def _promote_many(root, versions, n, barrier):
    reg = Registry(LocalStorage(root))
    barrier.wait()
    for i in range(n):
        reg.promote(versions[i % len(versions)])


def test_concurrent_promotions_from_two_processes_are_all_applied(registry, tmp_path):
    versions = [_register(registry, s) for s in (11, 12, 13)]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    n = 30
    procs = [ctx.Process(target=_promote_many, args=(tmp_path / "reg", versions[i:] + versions[:i], n, barrier))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    state = registry.alias()
    # no lost update: every promotion is in the log, and replaying the log gives the stored state
    assert len(state["log"]) == 2 * n
    assert len({e["pid"] for e in state["log"]}) == 2
    current, previous = None, []
    for entry in state["log"]:
        assert entry["from"] == current
        if current is not None and current != entry["to"]:
            previous.append(current)
        current = entry["to"]
    assert state["version"] == current in versions and state["previous"] == previous
    leftovers = [p.name for p in (tmp_path / "reg" / "aliases").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_open_storage_and_the_protocol():
    assert isinstance(open_storage("/tmp/x"), LocalStorage)
    gcs = open_storage("gs://bucket/some/prefix")
    assert isinstance(gcs, registry_mod.GcsStorage) and gcs.bucket_name == "bucket" and gcs.prefix == "some/prefix"
    assert isinstance(gcs, Storage) and isinstance(LocalStorage("/tmp/x"), Storage)
    with pytest.raises(ValueError, match="needs a bucket name"):
        open_storage("gs://")
    with pytest.raises(ValueError, match="relative paths"):
        LocalStorage("/tmp/x").read("../etc/passwd")


class _FakeBlob:
    """Just enough of google.cloud.storage.Blob for GcsStorage, with generation preconditions."""

    def __init__(self, bucket, name):
        self.bucket, self.name, self.generation = bucket, name, None

    def reload(self):
        from google.api_core.exceptions import NotFound
        if self.name not in self.bucket.objects:
            raise NotFound(self.name)
        self.generation = self.bucket.objects[self.name][1]

    def download_as_bytes(self, if_generation_match=None):
        from google.api_core.exceptions import NotFound, PreconditionFailed
        if self.name not in self.bucket.objects:
            raise NotFound(self.name)
        data, gen = self.bucket.objects[self.name]
        if if_generation_match is not None and gen != if_generation_match:
            raise PreconditionFailed(self.name)
        return data

    def upload_from_string(self, data, if_generation_match=None):
        from google.api_core.exceptions import PreconditionFailed
        gen = self.bucket.objects.get(self.name, (None, 0))[1]
        if if_generation_match is not None and gen != if_generation_match:
            raise PreconditionFailed(self.name)
        if self.bucket.interfere:  # another writer sneaks in once, before this write lands
            self.bucket.interfere = False
            self.bucket.objects[self.name] = (b'{"alias": "production", "version": "X", "previous": [], "log": []}', gen + 1)
            raise PreconditionFailed(self.name)
        self.bucket.objects[self.name] = (bytes(data), gen + 1)


class _FakeClient:
    def __init__(self):
        self.objects, self.interfere = {}, False

    def bucket(self, name):
        client = self

        class _Bucket:
            objects = client.objects

            @property
            def interfere(self):
                return client.interfere

            @interfere.setter
            def interfere(self, value):
                client.interfere = value

            def blob(self, blob_name):
                return _FakeBlob(self, blob_name)

        return _Bucket()

    def list_blobs(self, bucket, prefix):
        return [type("B", (), {"name": n})() for n in self.objects if n.startswith(prefix)]


def test_gcs_storage_with_a_fake_bucket():
    pytest.importorskip("google.cloud.storage")
    client = _FakeClient()
    registry = Registry(registry_mod.GcsStorage("bkt", "models", client=client))
    v1, v2 = _register(registry, 1), _register(registry, 2)
    assert registry.versions() == [v1, v2]
    assert all(name.startswith("models/versions/") for name in client.objects)
    with pytest.raises(FileExistsError):
        registry.storage.create(f"versions/{v1}/model.ubj", b"x")
    registry.promote(v1)
    client.interfere = True  # the compare-and-swap loses once and retries on the new state
    state = registry.promote(v2)
    assert state["version"] == v2 and state["previous"] == ["X"]
    assert registry.load(expected_spec_hash=SPEC).version == v2


def test_registry_command_line(registry, tmp_path, capsys):
    v1, v2 = _register(registry, 1), _register(registry, 2)
    root = str(tmp_path / "reg")
    root = [root, "--allow-unsigned"]
    assert registry_mod.run(["--registry", *root, "promote", v1]) == 0
    assert registry_mod.run(["--registry", *root, "promote", v2]) == 0
    assert registry_mod.run(["--registry", *root, "list"]) == 0
    out = capsys.readouterr().out
    assert f"* {v2}" in out and f"  {v1}" in out and "0.520" in out
    assert registry_mod.run(["--registry", *root, "rollback"]) == 0
    assert f"production -> {v1} (rolled back)" in capsys.readouterr().out
    assert registry_mod.run(["--registry", *root, "show", "production"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == v1
    assert registry_mod.run(["--registry", *root, "rollback"]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err


def test_online_snapshots_are_versioned_checksummed_and_behind_the_online_alias(tmp_path):
    from models.online import OnlineLearner
    from models.registry import ONLINE, ONLINE_FILE, IntegrityError, Registry, RegistryError, SpecMismatchError

    registry = Registry.open(tmp_path / "reg")
    spec = "a" * 64
    assert registry.load_online(expected_spec_hash=spec) is None
    learner = OnlineLearner(("x", "y"))
    for i in range(50):
        learner.learn_one([float(i % 2), 1.0], i % 2)
    first = registry.register_online(learner.snapshot(), {"feature_names": ["x", "y"], "labels": 50}, spec_hash=spec)
    learner.learn_one([1.0, 1.0], 1)
    second = registry.register_online(learner.snapshot(), {"feature_names": ["x", "y"], "labels": 51}, spec_hash=spec)
    assert registry.alias(ONLINE)["version"] == second and registry.alias(ONLINE)["log"] == []
    version, loaded = registry.load_online(expected_spec_hash=spec)
    assert version == second and loaded.labels_seen == 51
    assert registry.load_online(first, expected_spec_hash=spec)[1].labels_seen == 50
    with pytest.raises(SpecMismatchError):
        registry.load_online(expected_spec_hash="b" * 64)
    with pytest.raises(RegistryError, match="cannot serve as production"):
        registry.promote(second)
    (tmp_path / "reg" / "versions" / second / ONLINE_FILE).write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="does not match its recorded sha256"):
        registry.load_online(expected_spec_hash=spec)


def test_audit_events_are_append_only_checked_and_filterable(tmp_path, capsys):
    registry = Registry.open(tmp_path / "reg")
    v1 = _register(registry, 1)
    first = registry.record_event("register", actor="streamscore retrain", reason="scheduled", version=v1,
                                  details={"average_precision": 0.61})
    registry.record_event("gate", actor="streamscore retrain", reason="no champion", version=v1)
    registry.record_event("note", actor="tester", reason="unrelated")
    events = registry.events()
    assert [e["action"] for e in events] == ["register", "gate", "note"]
    assert events[0] == first and first["pid"] == os.getpid() and first["details"] == {"average_precision": 0.61}
    assert [e["action"] for e in registry.events(v1)] == ["register", "gate"]
    with pytest.raises(ValueError, match="needs an action, an actor and a reason"):
        registry.record_event("promote", actor="x", reason="")
    # The objects are immutable files; a rewritten one no longer matches the digest in its name.
    key = registry.storage.list("events/")[0]
    path = tmp_path / "reg" / key
    assert not os.stat(path).st_mode & stat.S_IWUSR
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes().replace(b"scheduled", b"by hand!!"))
    with pytest.raises(IntegrityError, match="does not match the digest"):
        registry.events()
    path.unlink()
    assert registry_mod.run(["--registry", str(tmp_path / "reg"), "--allow-unsigned", "events", "--version", v1]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["gate"]


def test_online_versions_derive_from_their_content(tmp_path):
    from streaming.features.spec import DEFAULT_SPEC

    registry = Registry.open(tmp_path)
    meta = {"feature_names": ["a"], "labels_learned": 7}
    first = registry.register_online(b"state-1", meta, spec_hash=DEFAULT_SPEC.spec_hash)
    again = registry.register_online(b"state-1", {**meta, "note": "retry"}, spec_hash=DEFAULT_SPEC.spec_hash)
    other = registry.register_online(b"state-2", {**meta, "labels_learned": 8}, spec_hash=DEFAULT_SPEC.spec_hash)
    assert first == again and first.startswith("online-learner-000000000007-") and other != first
    assert sorted(registry.versions()) == sorted([first, other]) and registry.alias("online")["version"] == other
    assert registry.latest_online(spec_hash=DEFAULT_SPEC.spec_hash) == other
    assert registry.latest_online(spec_hash="0" * 64) is None
    with pytest.raises(ValueError, match="learner_key"):
        registry.register_online(b"x", meta, spec_hash=DEFAULT_SPEC.spec_hash, learner_key="Bad Key")
