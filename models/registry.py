"""The model registry: immutable, checksummed model versions and a ``production`` alias.

A version is a folder ``versions/<id>/`` that is written once and never changed:

* ``model.ubj`` — the booster in XGBoost's own UBJSON format (never pickle);
* any extra files (e.g. ``report.html``);
* ``metadata.json`` — feature spec hash and names, parameters, data ranges, validation and
  test metrics, the sha256 of every other file, created-at and code version;
* ``metadata.json.sha256`` — the checksum of the metadata, written last: a version without
  it is incomplete and not listed.

``events/`` is an append-only audit log: every automatic action (``streamscore retrain``'s
register, gate verdict, promote or refusal) is one immutable object named by its time and the
sha256 of its body, with who, what, why and the metrics (:meth:`Registry.record_event`).

``aliases/production.json`` names the production version, the stack of earlier production
versions that :meth:`Registry.rollback` returns to, and a log of every move. Moves are
atomic read-modify-writes (:meth:`Storage.update`): a lock file plus write-to-temp and
``os.replace`` on a local disk, generation preconditions on Cloud Storage — so two
processes promoting at once both land, one after the other.

:meth:`Registry.load` verifies every checksum and refuses a model trained on a different
feature spec than the caller computes.

All storage goes through the four verbs of :class:`Storage`; :class:`LocalStorage` backs a
directory and :class:`GcsStorage` a ``gs://bucket/prefix``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from models.signing import (ALGORITHMS, ED25519, KeyFileError, KeyRing, SignatureError, add_key, add_trust_arguments,
                            generate, is_signature_file, keys_from_args)

MODEL_FILE = "model.ubj"
METADATA_FILE = "metadata.json"
SEAL_FILE = METADATA_FILE + ".sha256"
PRODUCTION = "production"
FORMAT = "xgboost-ubj"
#: Online (River) snapshots: a pickle, checksummed like every file, behind the ``online`` alias.
ONLINE = "online"
#: What an online learner key may be (it is part of the version id).
ONLINE_KEY_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")
ONLINE_FILE = "model.pkl"
ONLINE_FORMAT = "river-pickle"
#: The XGBoost version the predictor scores in shadow next to production (``streamscore controller``
#: promotes it after enough shadow events).
CHALLENGER = "challenger"
ALIAS_LOG_LIMIT = 1000


class RegistryError(Exception):
    """Something about the registry or a model version is not as required."""


class IntegrityError(RegistryError):
    """A stored file does not match its recorded sha256."""


class UntrustedVersionError(RegistryError):
    """A version is unsigned or its signature does not verify with a trusted key: nothing of it is deserialised."""


class SpecMismatchError(RegistryError):
    """The model was trained on features with a different spec hash than the caller's."""


# --------------------------------------------------------------------------- storage


@runtime_checkable
class Storage(Protocol):
    """Where a registry keeps its bytes. Keys are ``/``-separated relative paths."""

    def read(self, key: str) -> bytes:
        """The object's bytes; :class:`FileNotFoundError` if absent."""

    def create(self, key: str, data: bytes) -> None:
        """Write a new object; :class:`FileExistsError` if the key is taken (objects are immutable)."""

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    def update(self, key: str, change: Callable[[bytes | None], bytes]) -> bytes:
        """Atomically replace the object with ``change(current or None)`` and return the new bytes;
        concurrent updates of one key are serialised (none is lost)."""


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"storage keys must be relative paths without '.' or '..' parts, got {key!r}")
    return key


class LocalStorage:
    """A directory on a local (POSIX) file system."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def _write_temp(self, directory: Path, data: bytes) -> str:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def create(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_temp(path.parent, data)
        try:
            os.chmod(tmp, 0o444)
            os.link(tmp, path)  # atomic, and fails if the key exists
        finally:
            os.unlink(tmp)

    def list(self, prefix: str) -> list[str]:
        if not self.root.exists():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith((".tmp-", ".lock-")))

    def update(self, key: str, change: Callable[[bytes | None], bytes]) -> bytes:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".lock-{path.name}", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                current = path.read_bytes() if path.exists() else None
                new = change(current)
                tmp = self._write_temp(path.parent, new)
                os.replace(tmp, path)
                with contextlib.suppress(OSError):  # make the rename durable where supported
                    dir_fd = os.open(path.parent, os.O_RDONLY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
                return new
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class GcsStorage:
    """A ``gs://bucket/prefix`` (google-cloud-storage is imported on first use).

    ``create`` uses ``if_generation_match=0`` (only if absent); ``update`` is a
    compare-and-swap on the object generation, retried when another writer got there first.
    """

    def __init__(self, bucket: str, prefix: str = "", client=None, max_attempts: int = 20):
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.max_attempts = max_attempts
        self._client = client
        self._bucket = None

    def __repr__(self) -> str:
        return f"GcsStorage('gs://{self.bucket_name}/{self.prefix}')"

    def _blob(self, key: str):
        if self._bucket is None:
            if self._client is None:
                from google.cloud import storage  # lazy: only GCS users pay for the import
                self._client = storage.Client()
            self._bucket = self._client.bucket(self.bucket_name)
        name = f"{self.prefix}/{_check_key(key)}" if self.prefix else _check_key(key)
        return self._bucket.blob(name)

    @staticmethod
    def _errors():
        from google.api_core import exceptions
        return exceptions.NotFound, exceptions.PreconditionFailed

    def read(self, key: str) -> bytes:
        not_found, _ = self._errors()
        try:
            return self._blob(key).download_as_bytes()
        except not_found as exc:
            raise FileNotFoundError(f"gs://{self.bucket_name}/{self._blob(key).name} does not exist") from exc

    def create(self, key: str, data: bytes) -> None:
        _, precondition = self._errors()
        try:
            self._blob(key).upload_from_string(data, if_generation_match=0)
        except precondition as exc:
            raise FileExistsError(f"gs://{self.bucket_name}/{self._blob(key).name} already exists") from exc

    def list(self, prefix: str) -> list[str]:
        self._blob("x")  # initialise the client
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(b.name[cut:] for b in self._client.list_blobs(self.bucket_name, prefix=full))

    def update(self, key: str, change: Callable[[bytes | None], bytes]) -> bytes:
        not_found, precondition = self._errors()
        for _ in range(self.max_attempts):
            blob = self._blob(key)
            try:
                blob.reload()
                generation, current = blob.generation, blob.download_as_bytes(if_generation_match=blob.generation)
            except not_found:
                generation, current = 0, None
            except precondition:
                continue
            new = change(current)
            try:
                blob.upload_from_string(new, if_generation_match=generation)
                return new
            except precondition:
                continue
        raise RegistryError(f"could not update gs://{self.bucket_name}/{key}: {self.max_attempts} concurrent writers won the race")


def open_storage(location: str | os.PathLike) -> Storage:
    """``gs://bucket/prefix`` → :class:`GcsStorage`, anything else → :class:`LocalStorage`."""
    text = str(location)
    if text.startswith("gs://"):
        bucket, _, prefix = text[len("gs://"):].partition("/")
        if not bucket:
            raise ValueError(f"a Cloud Storage registry needs a bucket name: gs://BUCKET[/PREFIX], got {text!r}")
        return GcsStorage(bucket, prefix)
    return LocalStorage(text)


# --------------------------------------------------------------------------- registry


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=_json_default).encode("utf-8")


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    raise TypeError(f"metadata values must be JSON types, got {type(obj).__name__}: {obj!r}")


def code_version() -> dict:
    """The installed package version and, when run from a git checkout, its commit."""
    from importlib import metadata
    try:
        package = metadata.version("streamscore")
    except metadata.PackageNotFoundError:
        package = None
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=False)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    return {"package": package, "git_commit": commit}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A verified model version, ready to score feature vectors in ``feature_names`` order."""

    version: str
    booster: object
    metadata: dict

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.metadata["feature_names"])

    def score_many(self, features) -> np.ndarray:
        """Fraud probabilities for a 2-d array (rows × ``feature_names``)."""
        import xgboost as xgb

        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"features must be a 2-d array with {len(self.feature_names)} columns "
                             f"({', '.join(self.feature_names)}), got shape {x.shape}")
        return self.booster.predict(xgb.DMatrix(x, feature_names=list(self.feature_names))).astype(np.float64)


class Registry:
    """Model versions and aliases on a :class:`Storage`.

    With ``keys`` (a :class:`~models.signing.KeyRing`), every version written is signed with the
    ring's signing key and every version read must carry a valid signature by a key of the ring:
    :meth:`metadata` — through which every read goes — checks it on the raw metadata bytes before
    parsing them, and the files' checksums in that metadata are then checked before a model is
    deserialised. Without ``keys`` the registry neither signs nor checks signatures (checksums
    only): the command line allows that only with ``--allow-unsigned`` (see :func:`models.signing.keys_from_args`).
    """

    def __init__(self, storage: Storage, clock: Callable[[], dt.datetime] | None = None, *,
                 keys: KeyRing | None = None):
        self.storage = storage
        self.keys = keys
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    @classmethod
    def open(cls, location: str | os.PathLike, *, keys: KeyRing | None = None) -> Registry:
        return cls(open_storage(location), keys=keys)

    def __repr__(self) -> str:
        return f"Registry({self.storage!r})"

    # -- versions ---------------------------------------------------------------------

    def register(self, booster, metadata: dict, *, spec_hash: str,
                 extra_files: dict[str, bytes] | None = None) -> str:
        """Store a new immutable version and return its id (``YYYYmmddTHHMMSS.mmmZ-<digest>``).

        ``metadata`` needs ``feature_names``; the registry adds the version id, created-at,
        code version, spec hash, formats and the sha256 of every file.
        """
        import xgboost as xgb

        files = {MODEL_FILE: bytes(booster.save_raw(raw_format="ubj"))}
        for name, data in (extra_files or {}).items():
            if (name in (MODEL_FILE, ONLINE_FILE, METADATA_FILE, SEAL_FILE) or "/" in name or name.startswith(".")
                    or is_signature_file(name)):
                raise ValueError(f"extra file name {name!r} is reserved or not a plain file name")
            files[name] = bytes(data)
        return self._store(files, metadata, spec_hash, {"format": FORMAT, "xgboost_version": xgb.__version__})

    def register_online(self, snapshot: bytes, metadata: dict, *, spec_hash: str, learner_key: str = "learner",
                        labels_seen: int | None = None) -> str:
        """Store an online (River) model snapshot as a version and point the ``online`` alias at it.

        The snapshot is a pickle made by :meth:`models.online.OnlineLearner.snapshot`; like every
        file it is checksummed, and :meth:`load_online` verifies it before unpickling.

        The version id derives from the content — ``online-<learner key>-<labels seen>-<sha256 of
        the snapshot and spec>`` — so writing the same snapshot again (a retried bundle) finds its
        version and only re-points the alias, instead of adding a second version of one state.
        """
        labels = int(metadata.get("labels_learned", 0) if labels_seen is None else labels_seen)
        if not ONLINE_KEY_PATTERN.fullmatch(learner_key):
            raise ValueError(f"learner_key must match {ONLINE_KEY_PATTERN.pattern}, got {learner_key!r}")
        digest = sha256(bytes(snapshot) + spec_hash.encode("ascii"))[:16]
        version = f"online-{learner_key}-{labels:012d}-{digest}"
        if not self._existing_online(version, snapshot):
            self._store({ONLINE_FILE: bytes(snapshot)}, metadata, spec_hash, {"format": ONLINE_FORMAT},
                        version=version)
        self._move(ONLINE, lambda state: ("snapshot", version), history=False)
        return version

    def _existing_online(self, version: str, snapshot: bytes) -> bool:
        """Whether ``version`` is already complete with this snapshot (a retry); a partial one is an error."""
        present = self.storage.list(f"versions/{version}/")
        if not present:
            return False
        if not any(k.endswith("/" + SEAL_FILE) for k in present):
            raise RegistryError(f"online version {version} exists but is incomplete (no {SEAL_FILE}): "
                                "a writer died mid-write; remove the folder to retry")
        recorded = self.metadata(version)["files"][ONLINE_FILE]["sha256"]
        if recorded != sha256(bytes(snapshot)):
            raise IntegrityError(f"online version {version} holds a different snapshot (sha256 {recorded[:12]}…)")
        return True

    def latest_online(self, *, spec_hash: str | None = None, learner_key: str | None = None) -> str | None:
        """The newest complete online version (by created-at), optionally of one spec and learner key."""
        best: tuple[tuple[str, int], str] | None = None
        for version in self.versions():
            meta = self.metadata(version)
            if meta.get("format") != ONLINE_FORMAT:
                continue
            if spec_hash is not None and meta.get("feature_spec_hash") != spec_hash:
                continue
            if learner_key is not None and meta.get("learner_key", "learner") != learner_key:
                continue
            rank = (meta["created_at"], int(meta.get("labels_learned") or 0))  # ties within a millisecond: more labels
            if best is None or rank > best[0]:
                best = (rank, version)
        return None if best is None else best[1]

    def _store(self, files: dict[str, bytes], metadata: dict, spec_hash: str, extra: dict,
               version: str | None = None) -> str:
        if not isinstance(spec_hash, str) or len(spec_hash) != 64:
            raise ValueError(f"spec_hash must be a 64-character sha256 hex digest, got {spec_hash!r}")
        if not metadata.get("feature_names"):
            raise ValueError("metadata must list the model's feature_names in input order")
        created = self._clock().astimezone(dt.UTC)
        body = {**metadata, "feature_spec_hash": spec_hash, **extra,
                "code_version": code_version(), "created_at": created.isoformat(timespec="milliseconds"),
                "files": {name: {"sha256": sha256(data), "bytes": len(data)} for name, data in files.items()}}
        if version is None:
            version = f"{created:%Y%m%dT%H%M%S}.{created.microsecond // 1000:03d}Z-{sha256(_canonical(body))[:10]}"
        body = {"version": version, **body}
        meta_bytes = _canonical(body)
        if self.storage.list(f"versions/{version}/"):
            raise RegistryError(f"version {version} already exists (the same model and metadata were registered this millisecond)")
        if self.keys is not None and not self.keys.can_sign:
            raise UntrustedVersionError("this registry's key ring can only verify (no sign_with key): "
                                        "registering would write a version that nothing can trust")
        for name, data in files.items():
            self.storage.create(f"versions/{version}/{name}", data)
        self.storage.create(f"versions/{version}/{METADATA_FILE}", meta_bytes)
        if self.keys is not None:
            name, signature = self.keys.sign(version, meta_bytes)
            self.storage.create(f"versions/{version}/{name}", signature)
        self.storage.create(f"versions/{version}/{SEAL_FILE}", sha256(meta_bytes).encode("ascii"))
        return version

    def versions(self) -> list[str]:
        """Complete versions: XGBoost ones oldest first (their ids start with their creation time, to the
        millisecond), then the content-named ``online-…`` snapshots (order those by ``created_at``)."""
        return sorted(k.split("/")[1] for k in self.storage.list("versions/") if k.endswith("/" + SEAL_FILE))

    def metadata(self, version: str) -> dict:
        """A version's verified metadata."""
        self._check_exists(version)
        meta_bytes = self.storage.read(f"versions/{version}/{METADATA_FILE}")
        seal = self.storage.read(f"versions/{version}/{SEAL_FILE}").decode("ascii").strip()
        if sha256(meta_bytes) != seal:
            raise IntegrityError(f"version {version}: {METADATA_FILE} does not match its recorded sha256 "
                                 f"(expected {seal[:12]}…, got {sha256(meta_bytes)[:12]}…); the version was modified or corrupted")
        if self.keys is not None:
            self._check_signature(version, meta_bytes)
        return json.loads(meta_bytes)

    def _signatures(self, version: str) -> dict[str, bytes]:
        prefix = f"versions/{version}/"
        names = [k[len(prefix):] for k in self.storage.list(prefix)]
        return {n: self.storage.read(prefix + n) for n in names if "/" not in n and is_signature_file(n)}

    def _check_signature(self, version: str, meta_bytes: bytes) -> str:
        try:
            return self.keys.verify(version, meta_bytes, self._signatures(version))
        except SignatureError as exc:
            raise UntrustedVersionError(str(exc)) from None

    def sign(self, version: str, *, adopt: bool = False) -> str:
        """Add this ring's signature to an existing version; returns the signature's file name.

        Key rotation: with the old and the new key in the ring (signing with the new), the
        version verifies by its old signature and gains one by the new key. ``adopt`` signs a
        version that no key of the ring trusts yet (migrating an unsigned registry) after
        checking its checksums only: the operator vouches for it, so run it only on a registry
        whose contents you trust."""
        if self.keys is None or not self.keys.can_sign:
            raise UntrustedVersionError("signing needs a key ring with a sign_with key (--signing-key-file)")
        self._check_exists(version)
        meta_bytes = self.storage.read(f"versions/{version}/{METADATA_FILE}")
        seal = self.storage.read(f"versions/{version}/{SEAL_FILE}").decode("ascii").strip()
        if sha256(meta_bytes) != seal:
            raise IntegrityError(f"version {version}: {METADATA_FILE} does not match its recorded sha256")
        if not adopt:
            self._check_signature(version, meta_bytes)
        name, signature = self.keys.sign(version, meta_bytes)
        if name in self._signatures(version):
            return name
        self._read_files(version, json.loads(meta_bytes))  # every file matches the manifest being signed
        self.storage.create(f"versions/{version}/{name}", signature)
        return name

    def verify(self, version: str) -> dict[str, bytes]:
        """Read every file of a version, checking each against its sha256; returns their bytes."""
        return self._read_files(version, self.metadata(version))

    def _read_files(self, version: str, meta: dict) -> dict[str, bytes]:
        out = {}
        for name, info in meta["files"].items():
            try:
                data = self.storage.read(f"versions/{version}/{name}")
            except FileNotFoundError as exc:
                raise IntegrityError(f"version {version}: file {name} is missing") from exc
            if sha256(data) != info["sha256"]:
                raise IntegrityError(f"version {version}: {name} does not match its recorded sha256 "
                                     f"(expected {info['sha256'][:12]}…, got {sha256(data)[:12]}…); "
                                     "the version was modified or corrupted")
            out[name] = data
        return out

    def resolve(self, ref: str = PRODUCTION) -> str:
        """A version id from an alias name or a version id."""
        if ref == PRODUCTION:
            current = self.alias(PRODUCTION)["version"]
            if current is None:
                raise RegistryError("no version is in production yet: run `streamscore registry promote VERSION`")
            return current
        self._check_exists(ref)
        return ref

    def load(self, ref: str = PRODUCTION, *, expected_spec_hash: str) -> LoadedModel:
        """Load a version (or the production alias) after verifying its checksums and that it was
        trained on features with ``expected_spec_hash``."""
        import xgboost as xgb

        version = self.resolve(ref)
        meta = self.metadata(version)
        if meta.get("feature_spec_hash") != expected_spec_hash:
            raise SpecMismatchError(
                f"model version {version} was trained on features with spec hash {str(meta.get('feature_spec_hash'))[:12]}…, "
                f"but the features here have spec hash {expected_spec_hash[:12]}…; it would score the wrong inputs — "
                "retrain it on the current features or serve it with the feature spec it was trained on")
        if meta.get("format") != FORMAT:
            raise RegistryError(f"model version {version} has format {meta.get('format')!r}, expected {FORMAT!r}")
        files = self.verify(version)
        booster = xgb.Booster()
        booster.load_model(bytearray(files[MODEL_FILE]))
        return LoadedModel(version, booster, meta)

    def load_online(self, ref: str = ONLINE, *, expected_spec_hash: str):
        """The online learner behind the ``online`` alias (or a version id) as ``(version, OnlineLearner)``,
        after verifying checksums and the spec hash; ``None`` when no snapshot exists yet."""
        from models.online import OnlineLearner

        version = self.alias(ONLINE)["version"] if ref == ONLINE else ref
        if version is None:
            return None
        self._check_exists(version)
        meta = self.metadata(version)
        if meta.get("format") != ONLINE_FORMAT:
            raise RegistryError(f"version {version} has format {meta.get('format')!r}, expected {ONLINE_FORMAT!r}")
        if meta.get("feature_spec_hash") != expected_spec_hash:
            raise SpecMismatchError(f"online model version {version} was trained on features with spec hash "
                                    f"{str(meta.get('feature_spec_hash'))[:12]}…, but the features here have spec hash "
                                    f"{expected_spec_hash[:12]}…")
        return version, OnlineLearner.restore(self.verify(version)[ONLINE_FILE])

    def _check_exists(self, version: str) -> None:
        if not isinstance(version, str) or "/" in version or version in ("", ".", ".."):
            raise RegistryError(f"not a version id: {version!r}")
        try:
            self.storage.read(f"versions/{version}/{SEAL_FILE}")
        except FileNotFoundError:
            known = self.versions()
            hint = f"; known versions: {', '.join(known[-5:])}" if known else "; the registry is empty"
            raise RegistryError(f"no complete model version {version!r} in {self.storage!r}{hint}") from None

    # -- audit events -----------------------------------------------------------------

    def record_event(self, action: str, *, actor: str, reason: str, version: str | None = None,
                     details: dict | None = None) -> dict:
        """Append an audit event (who: ``actor``, host and pid; what: ``action`` on ``version``;
        why: ``reason``; ``details``: the metrics) as a new immutable object; returns it."""
        if not action or not actor or not reason:
            raise ValueError(f"an audit event needs an action, an actor and a reason, got {action!r}, {actor!r}, {reason!r}")
        at = self._clock().astimezone(dt.UTC)
        body = {"at": at.isoformat(timespec="microseconds"), "action": action, "version": version, "actor": actor,
                "host": socket.gethostname(), "pid": os.getpid(), "reason": reason, "details": details or {}}
        data = _canonical(body)
        self.storage.create(f"events/{at:%Y%m%dT%H%M%S.%f}Z-{sha256(data)[:16]}.json", data)
        return body

    def events(self, version: str | None = None) -> list[dict]:
        """The audit events, oldest first (only ``version``'s when given); each is checked against
        the digest in its name."""
        out = []
        for key in self.storage.list("events/"):
            data = self.storage.read(key)
            if not key.endswith(f"-{sha256(data)[:16]}.json"):
                raise IntegrityError(f"audit event {key} does not match the digest in its name; it was modified")
            event = json.loads(data)
            if version is None or event.get("version") == version:
                out.append(event)
        return out

    # -- aliases ----------------------------------------------------------------------

    def alias(self, name: str = PRODUCTION) -> dict:
        """``{"version": current or None, "previous": [...], "log": [...]}``."""
        try:
            return json.loads(self.storage.read(f"aliases/{name}.json"))
        except FileNotFoundError:
            return {"alias": name, "version": None, "previous": [], "log": []}

    def _move(self, name: str, move: Callable[[dict], tuple[str, str]], history: bool = True) -> dict:
        def change(current: bytes | None) -> bytes:
            state = json.loads(current) if current else {"alias": name, "version": None, "previous": [], "log": []}
            action, target = move(state)
            if history:
                state["log"].append({"at": self._clock().astimezone(dt.UTC).isoformat(timespec="microseconds"),
                                     "action": action, "from": state["version"], "to": target, "pid": os.getpid()})
                del state["log"][:-ALIAS_LOG_LIMIT]
            state["version"] = target
            return _canonical(state)

        return json.loads(self.storage.update(f"aliases/{name}.json", change))

    def promote(self, version: str, alias: str = PRODUCTION) -> dict:
        """Point ``alias`` at ``version`` (after verifying its files); the old target can be rolled back to."""
        self.verify(version)
        if alias in (PRODUCTION, CHALLENGER) and self.metadata(version).get("format") != FORMAT:
            raise RegistryError(f"version {version} is not an XGBoost model (format "
                                f"{self.metadata(version).get('format')!r}) and cannot serve as {alias}")

        def move(state: dict) -> tuple[str, str]:
            if state["version"] is not None and state["version"] != version:
                state["previous"].append(state["version"])
            return "promote", version

        return self._move(alias, move)

    def clear(self, alias: str) -> dict:
        """Point ``alias`` at nothing (the ``challenger`` once promoted or retired); logged like every move."""
        if alias == PRODUCTION:
            raise RegistryError("the production alias cannot be cleared: promote another version or roll back")
        return self._move(alias, lambda state: ("clear", None))

    def rollback(self, alias: str = PRODUCTION) -> dict:
        """Point ``alias`` back at the version it pointed to before the last promotion."""
        def move(state: dict) -> tuple[str, str]:
            if not state["previous"]:
                raise RegistryError(f"nothing to roll back to: alias {alias!r} has no earlier version "
                                    f"(it points to {state['version']})")
            return "rollback", state["previous"].pop()

        return self._move(alias, move)


# --------------------------------------------------------------------------- command line


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def run(argv: list[str] | None = None) -> int:
    """``streamscore registry``: list model versions, promote one to production, roll back."""
    parser = argparse.ArgumentParser(prog="streamscore registry", description=run.__doc__)
    parser.add_argument("--registry", default="registry", help="registry directory or gs://bucket/prefix (default ./registry)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="versions, newest last, with test metrics; * marks production, o the online "
                   "model, c the challenger (in shadow)")
    show = sub.add_parser("show", help="a version's metadata as JSON")
    show.add_argument("version", help="version id or 'production'")
    promote = sub.add_parser("promote", help="point the production alias (or --alias challenger) at VERSION")
    promote.add_argument("version")
    promote.add_argument("--alias", choices=(PRODUCTION, CHALLENGER), default=PRODUCTION,
                         help="production (default) or challenger: score VERSION in shadow next to production")
    sub.add_parser("rollback", help="point production back at the version before the last promotion")
    sign = sub.add_parser("sign", help="add the key ring's signature to VERSION (key rotation; --adopt: an unsigned one)")
    sign.add_argument("version")
    sign.add_argument("--adopt", action="store_true",
                      help="sign a version no trusted key signed yet, after checking its checksums only "
                           "(migrating an unsigned registry you trust)")
    keygen = sub.add_parser("keygen", help="write a new key ring (mode 600) and, for ed25519, its verify-only half")
    keygen.add_argument("--out", required=True, help="the new key ring file (must not exist)")
    keygen.add_argument("--public-out", help="also write the verify-only ring (ed25519 public keys) here")
    keygen.add_argument("--key-id", required=True, help="the key's id, e.g. trainer-2026-12")
    keygen.add_argument("--alg", choices=ALGORITHMS, default=ED25519)
    keygen.add_argument("--add-to", help="rotation: copy this ring's keys in and sign with the new key")
    add_trust_arguments(parser, signs=False)
    events = sub.add_parser("events", help="the audit log of automatic actions (JSON lines), oldest first")
    events.add_argument("--version", help="only this version's events")
    args = parser.parse_args(argv)

    try:
        if args.action == "keygen":
            return _keygen(args)
        registry = Registry.open(args.registry, keys=keys_from_args(args, signs=args.action == "sign"))
        if args.action == "list":
            current, online = registry.alias()["version"], registry.alias(ONLINE)["version"]
            challenger = registry.alias(CHALLENGER)["version"]
            print(f"{'':2}{'version':<32} {'kind':<7} {'created (UTC)':<30} {'AUC':>6} {'AP':>6} {'CP@100':>6}  spec")
            for version in registry.versions():
                meta = registry.metadata(version)
                test = meta.get("test_metrics") or {}
                kind = "online" if meta.get("format") == ONLINE_FORMAT else "xgboost"
                mark = "*" if version == current else ("o" if version == online else ("c" if version == challenger else " "))
                print(f"{mark:2}{version:<32} {kind:<7} {meta['created_at']:<30} "
                      f"{_fmt(test.get('auc_roc')):>6} {_fmt(test.get('average_precision')):>6} "
                      f"{_fmt(test.get('card_precision@100')):>6}  {meta['feature_spec_hash'][:12]}")
        elif args.action == "show":
            print(json.dumps(registry.metadata(registry.resolve(args.version)), indent=2))
        elif args.action == "events":
            for event in registry.events(args.version):
                print(json.dumps(event, sort_keys=True))
        elif args.action == "promote":
            state = registry.promote(args.version, args.alias)
            print(f"{args.alias} -> {state['version']}")
        elif args.action == "sign":
            print(f"{args.version}: {registry.sign(args.version, adopt=args.adopt)}")
        else:
            state = registry.rollback()
            print(f"production -> {state['version']} (rolled back)")
    except (RegistryError, KeyFileError, SignatureError) as exc:
        print(f"streamscore registry: {exc}", file=sys.stderr)
        return 2
    return 0


def _keygen(args) -> int:
    ring = generate(args.key_id, args.alg)
    if args.add_to:
        ring = add_key(KeyRing.load(args.add_to), ring.keys[0], sign_with=True)
    ring.save(args.out)
    print(f"{args.out}: key ring {', '.join(k.key_id for k in ring.keys)}; signs with {ring.sign_with}")
    if args.public_out:
        ring.save(args.public_out, public_only=True)
        print(f"{args.public_out}: its verify-only ring (give this one to predictors)")
    return 0


if __name__ == "__main__":
    sys.exit(run())
