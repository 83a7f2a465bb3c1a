"""The registry's trust anchor: signed versions, refused before anything is deserialised, key rotation.

The attacks are the issue's: write access to the registry lets one rewrite a file *and* its
checksums. Each malicious snapshot here is a pickle whose unpickling creates a marker file, so
"refused before deserialisation" is observed, not assumed: the marker must not exist.
"""

import json
import os
import pickle
import stat

import numpy as np
import pytest
import xgboost as xgb

from models import registry as registry_mod
from models.online import OnlineLearner
from models.registry import (METADATA_FILE, SEAL_FILE, IntegrityError, LocalStorage, Registry, UntrustedVersionError,
                             sha256)
from models.signing import (ED25519, HMAC, Key, KeyFileError, KeyRing, add_key, generate, keys_from_args,
                            signature_file)

SPEC = "a" * 64
NAMES = ["x0", "x1", "x2"]


class Exploit:
    """Unpickling this creates ``path``: the proof that ``pickle.loads`` ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _booster(rounds: int = 2) -> xgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    return xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, label=x[:, 0] > 0,
                                                                                 feature_names=NAMES), rounds)


def _learner() -> bytes:
    learner = OnlineLearner(NAMES)
    learner.learn_one([0.1, 0.2, 0.3], 1)
    return learner.snapshot()


@pytest.fixture(params=[ED25519, HMAC])
def ring(request) -> KeyRing:
    return generate("trainer-1", request.param)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "reg"


def _online(root, ring) -> tuple[Registry, str]:
    registry = Registry(LocalStorage(root), keys=ring)
    return registry, registry.register_online(_learner(), {"feature_names": NAMES}, spec_hash=SPEC)


def _overwrite(path, data: bytes) -> None:
    os.chmod(path, stat.S_IWUSR | stat.S_IRUSR)
    path.write_bytes(data)


def _rewrite_with_checksums(folder, name: str, data: bytes) -> None:
    """The issue's attack: replace a file, then its checksum in the metadata and the metadata's seal."""
    _overwrite(folder / name, data)
    meta = json.loads((folder / METADATA_FILE).read_bytes())
    meta["files"][name] = {"sha256": sha256(data), "bytes": len(data)}
    meta_bytes = json.dumps(meta, sort_keys=True, indent=2).encode()
    _overwrite(folder / METADATA_FILE, meta_bytes)
    _overwrite(folder / SEAL_FILE, sha256(meta_bytes).encode())


def test_signed_versions_load_and_carry_their_key_id(root, ring):
    registry, online = _online(root, ring)
    model = registry.register(_booster(), {"feature_names": NAMES}, spec_hash=SPEC)
    assert registry.load(model, expected_spec_hash=SPEC).version == model
    assert isinstance(registry.load_online(expected_spec_hash=SPEC)[1], OnlineLearner)
    assert (root / "versions" / online / signature_file("trainer-1")).exists()
    # a process that holds only the verify-only half (ed25519) loads them too
    if ring.keys[0].alg == ED25519:
        verifier = Registry(LocalStorage(root), keys=ring.public())
        assert verifier.load(model, expected_spec_hash=SPEC).version == model


def test_rewritten_file_and_checksums_is_refused_before_unpickling(root, ring, tmp_path):
    registry, version = _online(root, ring)
    marker = tmp_path / "pwned"
    _rewrite_with_checksums(root / "versions" / version, "model.pkl", pickle.dumps(Exploit(marker)))
    with pytest.raises(UntrustedVersionError, match="does not verify"):
        registry.load_online(expected_spec_hash=SPEC)
    assert not marker.exists()
    # the same registry read without a key ring *would* unpickle it: the marker proves the payload is live
    with pytest.raises(TypeError, match="expected an OnlineLearner"):
        Registry(LocalStorage(root)).load_online(expected_spec_hash=SPEC)
    assert marker.exists()


def test_flipped_byte_is_refused_before_unpickling(root, ring, tmp_path):
    registry, version = _online(root, ring)
    path = root / "versions" / version / "model.pkl"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    _overwrite(path, bytes(data))
    with pytest.raises(IntegrityError, match="model.pkl does not match"):
        registry.load_online(expected_spec_hash=SPEC)


def test_unsigned_version_is_refused(root, ring, tmp_path):
    marker = tmp_path / "pwned"
    attacker = Registry(LocalStorage(root))  # can write the registry, holds no key
    version = attacker.register_online(pickle.dumps(Exploit(marker)), {"feature_names": NAMES}, spec_hash=SPEC)
    registry = Registry(LocalStorage(root), keys=ring)
    with pytest.raises(UntrustedVersionError, match="not signed"):
        registry.load_online(version, expected_spec_hash=SPEC)
    with pytest.raises(UntrustedVersionError):
        registry.metadata(version)
    assert not marker.exists()


def test_wrong_key_and_copied_signature_are_refused(root, ring, tmp_path):
    marker = tmp_path / "pwned"
    registry, good = _online(root, ring)
    # the attacker's own key under the trusted key's id
    forged = KeyRing((Key("trainer-1", ring.keys[0].alg, os.urandom(32), True),), "trainer-1")
    bad = Registry(LocalStorage(root), keys=forged).register_online(
        pickle.dumps(Exploit(marker)), {"feature_names": NAMES}, spec_hash=SPEC)
    with pytest.raises(UntrustedVersionError, match="trainer-1: does not verify"):
        registry.load_online(bad, expected_spec_hash=SPEC)
    # a valid signature of another version, copied over
    folder = root / "versions" / bad
    _overwrite(folder / signature_file("trainer-1"), (root / "versions" / good / signature_file("trainer-1")).read_bytes())
    with pytest.raises(UntrustedVersionError, match="does not verify"):
        registry.load_online(bad, expected_spec_hash=SPEC)
    # an unknown key id
    other = Registry(LocalStorage(root), keys=generate("someone", ring.keys[0].alg))
    # (other content than ``bad``: online versions derive from their content, so the same bytes are the same version)
    third = other.register_online(pickle.dumps(Exploit(marker)), {"feature_names": NAMES, "labels_learned": 1},
                                  spec_hash=SPEC)
    with pytest.raises(UntrustedVersionError, match="someone: not a trusted key"):
        registry.load_online(third, expected_spec_hash=SPEC)
    assert not marker.exists()


def test_a_tampered_xgboost_version_is_refused_and_cannot_be_promoted(root, ring):
    registry = Registry(LocalStorage(root), keys=ring)
    version = registry.register(_booster(), {"feature_names": NAMES}, spec_hash=SPEC)
    registry.promote(version)
    other = bytes(_booster(rounds=5).save_raw(raw_format="ubj"))  # e.g. a model that lets the attacker's cards pass
    _rewrite_with_checksums(root / "versions" / version, "model.ubj", other)
    with pytest.raises(UntrustedVersionError):
        registry.load(expected_spec_hash=SPEC)
    with pytest.raises(UntrustedVersionError):
        registry.promote(version)


def test_rotation_needs_no_downtime(root):
    old = generate("k1")
    registry = Registry(LocalStorage(root), keys=old)
    before = registry.register(_booster(), {"feature_names": NAMES}, spec_hash=SPEC)
    # 1. verifiers get a ring with both keys (still signing with k1): old versions keep loading
    new_key = generate("k2").keys[0]
    both_verify = add_key(old.public(), Key(new_key.key_id, new_key.alg, new_key.public_bytes(), False), sign_with=False)
    assert Registry(LocalStorage(root), keys=both_verify).load(before, expected_spec_hash=SPEC).version == before
    # 2. signers switch to k2; versions in use are re-signed with it
    signer = Registry(LocalStorage(root), keys=add_key(old, new_key, sign_with=True))
    after = signer.register(_booster(), {"feature_names": NAMES}, spec_hash=SPEC)
    assert signer.sign(before) == signature_file("k2")
    # 3. k1 is dropped everywhere: both versions still verify, by k2
    only_new = KeyRing((new_key,), "k2")
    for version in (before, after):
        assert Registry(LocalStorage(root), keys=only_new).load(version, expected_spec_hash=SPEC).version == version
    # a version that was never re-signed is refused once its key is gone
    stale = registry.register(_booster(), {"feature_names": NAMES}, spec_hash=SPEC)
    with pytest.raises(UntrustedVersionError, match="k1: not a trusted key"):
        Registry(LocalStorage(root), keys=only_new).metadata(stale)


def test_adopting_an_unsigned_version_checks_its_checksums(root, tmp_path):
    unsigned = Registry(LocalStorage(root))
    version = unsigned.register(_booster(), {"feature_names": NAMES}, spec_hash=SPEC)
    ring = generate("k1")
    registry = Registry(LocalStorage(root), keys=ring)
    with pytest.raises(UntrustedVersionError, match="not signed"):
        registry.sign(version)
    assert registry.sign(version, adopt=True) == signature_file("k1")
    assert registry.load(version, expected_spec_hash=SPEC).version == version
    corrupt = unsigned.register(_booster(), {"feature_names": NAMES, "n": 2}, spec_hash=SPEC)
    path = root / "versions" / corrupt / "model.ubj"
    _overwrite(path, path.read_bytes()[:-2] + b"x}")
    with pytest.raises(IntegrityError):
        registry.sign(corrupt, adopt=True)


def test_a_verify_only_ring_cannot_register(root):
    ring = generate("k1").public()
    with pytest.raises(UntrustedVersionError, match="can only verify"):
        Registry(LocalStorage(root), keys=ring).register(_booster(), {"feature_names": NAMES}, spec_hash=SPEC)
    assert Registry(LocalStorage(root)).versions() == []


def test_key_files_are_checked_with_clear_errors(tmp_path):
    ring = generate("k1")
    path = tmp_path / "ring.json"
    ring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and KeyRing.load(path) == ring
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by group or others"):
        KeyRing.load(path)
    public = tmp_path / "public.json"
    ring.save(public, public_only=True)
    os.chmod(public, 0o644)
    assert not KeyRing.load(public).can_sign and "private" not in public.read_text()
    cases = [
        (b"[]", "expected"), (b'{"keys": []}', "at least one key"),
        (b'{"keys": [{"id": "k", "alg": "rsa", "public": "AA=="}]}', "alg must be one of"),
        (b'{"keys": [{"id": "k", "alg": "hmac-sha256", "secret": "c2hvcnQ="}]}', "at least 32 bytes"),
        (b'{"keys": [{"id": "../k", "alg": "ed25519", "public": "' + b"A" * 43 + b'="}]}', "key id must be"),
        (b'{"keys": [{"id": "k", "alg": "ed25519", "secret": "AA=="}]}', "does not take a 'secret'"),
        (b'{"keys": [{"id": "k", "alg": "ed25519", "public": "!!"}]}', "must be base64"),
        (ring.public().to_json()[:-2] + b', "sign_with": "k1"}', "must name a private key"),
    ]
    for data, message in cases:
        with pytest.raises(KeyFileError, match=message):
            KeyRing.from_json(data)


def test_commands_refuse_to_guess_the_trust_policy(tmp_path):
    import argparse

    args = argparse.Namespace(signing_key_file=None, allow_unsigned=False)
    with pytest.raises(KeyFileError, match="give --signing-key-file FILE"):
        keys_from_args(args, signs=False, env={})
    assert keys_from_args(argparse.Namespace(signing_key_file=None, allow_unsigned=True), signs=True, env={}) is None
    public = tmp_path / "public.json"
    generate("k1").save(public, public_only=True)
    assert keys_from_args(args, signs=False, env={"STREAMSCORE_SIGNING_KEY_FILE": str(public)}).keys[0].key_id == "k1"
    with pytest.raises(KeyFileError, match="must sign them"):
        keys_from_args(argparse.Namespace(signing_key_file=str(public), allow_unsigned=False), signs=True, env={})


def test_registry_command_line_signs_rotates_and_refuses(tmp_path, capsys):
    root, ring, rotated = str(tmp_path / "reg"), tmp_path / "ring.json", tmp_path / "ring2.json"
    assert registry_mod.run(["keygen", "--out", str(ring), "--key-id", "k1", "--public-out", str(tmp_path / "pub.json")]) == 0
    version = Registry.open(root, keys=KeyRing.load(ring)).register(_booster(), {"feature_names": NAMES}, spec_hash=SPEC)
    assert registry_mod.run(["--registry", root, "promote", version]) == 2
    assert "--signing-key-file" in capsys.readouterr().err
    assert registry_mod.run(["--registry", root, "--signing-key-file", str(tmp_path / "pub.json"), "promote", version]) == 0
    assert registry_mod.run(["keygen", "--out", str(rotated), "--key-id", "k2", "--add-to", str(ring)]) == 0
    assert registry_mod.run(["--registry", root, "--signing-key-file", str(rotated), "sign", version]) == 0
    assert signature_file("k2") in capsys.readouterr().out
    unsigned = Registry.open(root).register(_booster(), {"feature_names": NAMES, "n": 1}, spec_hash=SPEC)
    assert registry_mod.run(["--registry", root, "--signing-key-file", str(ring), "promote", unsigned]) == 2
    assert "not signed" in capsys.readouterr().err
