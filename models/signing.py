"""The registry's trust anchor: signatures over a version's manifest, checked before any byte is deserialised.

A registry version's ``metadata.json`` lists the sha256 of every file of the version (the
manifest). A signature covers the version id and those exact metadata bytes, so a verified
signature vouches for every file through its checksum. The signing key is **not** stored in
the registry: whoever can write the registry (or its bucket) can rewrite a file and its
checksums, but cannot sign them.

Two algorithms:

* ``ed25519`` (the ``cryptography`` package): the trainer / learner hold the private key;
  the predictor only needs the public key (a verify-only key file), so a compromised
  predictor cannot sign anything;
* ``hmac-sha256`` (stdlib ``hmac``): one shared secret, for signer and verifier alike.

A key file is JSON — a key ring, so rotation needs no downtime::

    {"sign_with": "k2",
     "keys": [{"id": "k1", "alg": "ed25519", "public": "<base64 32 bytes>"},
              {"id": "k2", "alg": "ed25519", "private": "<base64 32 bytes>"},
              {"id": "h1", "alg": "hmac-sha256", "secret": "<base64 >= 32 bytes>"}]}

Every key in the ring verifies (a private Ed25519 key verifies with its public half); the
``sign_with`` key signs. Each signature names its key id, and a version may carry several
signatures (``signature.<key id>.json``): :meth:`models.registry.Registry.sign` adds one
with a new key to an existing version. Rotation is in ``docs/security.md``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import re
from pathlib import Path

HMAC = "hmac-sha256"
ED25519 = "ed25519"
ALGORITHMS = (ED25519, HMAC)
#: Domain separation: a signature over a registry manifest is never valid as anything else.
CONTEXT = b"streamscore-registry-manifest-v1\n"
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_HMAC_BYTES = 32


class KeyFileError(ValueError):
    """A key file or key is not as required ."""


class SignatureError(Exception):
    """A version's signature is missing, names no trusted key, or does not verify."""


def signed_message(version: str, metadata: bytes) -> bytes:
    return CONTEXT + version.encode("utf-8") + b"\n" + hashlib.sha256(metadata).digest()


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a ring: ``material`` is the HMAC secret, the Ed25519 private seed or its public key."""

    key_id: str
    alg: str
    material: bytes = dataclasses.field(repr=False)
    private: bool

    def __post_init__(self):
        if not isinstance(self.key_id, str) or not KEY_ID.fullmatch(self.key_id):
            raise KeyFileError(f"key id must be 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit, "
                            f"got {self.key_id!r}")
        if self.alg not in ALGORITHMS:
            raise KeyFileError(f"key {self.key_id}: alg must be one of {', '.join(ALGORITHMS)}, got {self.alg!r}")
        if self.alg == HMAC and len(self.material) < MIN_HMAC_BYTES:
            raise KeyFileError(f"key {self.key_id}: an hmac-sha256 secret must be at least {MIN_HMAC_BYTES} bytes, "
                            f"got {len(self.material)}")
        if self.alg == ED25519 and len(self.material) != 32:
            raise KeyFileError(f"key {self.key_id}: an ed25519 key is 32 bytes, got {len(self.material)}")

    def sign(self, message: bytes) -> bytes:
        if not self.private:
            raise KeyFileError(f"key {self.key_id} is a verify-only (public) key and cannot sign")
        if self.alg == HMAC:
            return hmac.new(self.material, message, hashlib.sha256).digest()
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        return Ed25519PrivateKey.from_private_bytes(self.material).sign(message)

    def verifies(self, message: bytes, signature: bytes) -> bool:
        if self.alg == HMAC:
            return hmac.compare_digest(hmac.new(self.material, message, hashlib.sha256).digest(), signature)
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        try:
            Ed25519PublicKey.from_public_bytes(self.public_bytes()).verify(signature, message)
            return True
        except InvalidSignature:
            return False

    def public_bytes(self) -> bytes:
        if self.alg != ED25519 or not self.private:
            return self.material
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        return Ed25519PrivateKey.from_private_bytes(self.material).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def to_json(self, *, public_only: bool = False) -> dict:
        if self.alg == HMAC:
            if public_only:
                raise KeyFileError(f"key {self.key_id} is an hmac-sha256 secret: it has no public half")
            return {"id": self.key_id, "alg": HMAC, "secret": base64.b64encode(self.material).decode()}
        if self.private and not public_only:
            return {"id": self.key_id, "alg": ED25519, "private": base64.b64encode(self.material).decode()}
        return {"id": self.key_id, "alg": ED25519, "public": base64.b64encode(self.public_bytes()).decode()}


def _b64(entry: dict, field: str, where: str) -> bytes:
    try:
        return base64.b64decode(entry[field], validate=True)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{where}: {field!r} must be base64, got {str(entry[field])[:20]!r}…") from exc


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """The keys a process trusts (all verify) and the one it signs with (``sign_with``, or none)."""

    keys: tuple[Key, ...]
    sign_with: str | None = None

    def __post_init__(self):
        ids = [k.key_id for k in self.keys]
        if not ids:
            raise KeyFileError("a key ring needs at least one key")
        if len(ids) != len(set(ids)):
            raise KeyFileError(f"key ids must be unique in a ring, got {ids}")
        if self.sign_with is not None:
            signer = self.key(self.sign_with)
            if signer is None or not signer.private:
                raise KeyFileError(f"sign_with {self.sign_with!r} must name a private key of the ring (ids: {ids})")

    def key(self, key_id: str) -> Key | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    @property
    def can_sign(self) -> bool:
        return self.sign_with is not None

    def sign(self, version: str, metadata: bytes) -> tuple[str, bytes]:
        """``(file name, bytes)`` of this ring's signature of a version."""
        if self.sign_with is None:
            raise SignatureError("this key ring has no signing key (sign_with): it can only verify")
        key = self.key(self.sign_with)
        body = {"key_id": key.key_id, "alg": key.alg, "version": version,
                "signature": base64.b64encode(key.sign(signed_message(version, metadata))).decode()}
        return signature_file(key.key_id), json.dumps(body, sort_keys=True).encode()

    def verify(self, version: str, metadata: bytes, signatures: dict[str, bytes]) -> str:
        """The id of a trusted key with a valid signature among ``signatures`` (file name → bytes), else raise."""
        if not signatures:
            raise SignatureError(f"version {version} is not signed; refused (sign it with `streamscore registry sign` "
                                 "or, for local development only, pass --allow-unsigned)")
        message, seen = signed_message(version, metadata), []
        for name, raw in sorted(signatures.items()):
            try:
                body = json.loads(raw)
                key_id, alg, signature = body["key_id"], body["alg"], base64.b64decode(body["signature"], validate=True)
            except (ValueError, KeyError, TypeError):
                seen.append(f"{name}: unreadable")
                continue
            key = self.key(key_id) if name == signature_file(str(key_id)) else None
            if key is None:
                seen.append(f"{key_id}: not a trusted key")
            elif key.alg != alg:
                seen.append(f"{key_id}: made with {alg}, the trusted key is {key.alg}")
            elif body.get("version") != version or not key.verifies(message, signature):
                seen.append(f"{key_id}: does not verify")
            else:
                return key_id
        trusted = ", ".join(k.key_id for k in self.keys)
        raise SignatureError(f"version {version}: no valid signature by a trusted key ({'; '.join(seen)}; trusted "
                             f"keys: {trusted}); the version was modified or signed by someone else — refused")

    def public(self) -> KeyRing:
        """The verify-only ring (Ed25519 public halves) to give predictors; HMAC keys cannot be split."""
        return KeyRing(tuple(Key(k.key_id, k.alg, k.public_bytes(), False) for k in self.keys))

    def to_json(self, *, public_only: bool = False) -> bytes:
        body = {"keys": [k.to_json(public_only=public_only) for k in self.keys]}
        if self.sign_with is not None and not public_only:
            body["sign_with"] = self.sign_with
        return json.dumps(body, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str = "key file") -> KeyRing:
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise KeyFileError(f"{where}: not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise KeyFileError(f'{where}: expected {{"keys": [...], "sign_with": ID}}, got {type(body).__name__}')
        keys = []
        for i, entry in enumerate(body["keys"]):
            at = f"{where}: keys[{i}]"
            if not isinstance(entry, dict) or "id" not in entry or "alg" not in entry:
                raise KeyFileError(f"{at}: each key needs 'id' and 'alg'")
            fields = [f for f in ("secret", "private", "public") if f in entry]
            if len(fields) != 1:
                raise KeyFileError(f"{at}: exactly one of 'secret' (hmac-sha256), 'private' or 'public' (ed25519), "
                                f"got {fields}")
            field = fields[0]
            if (field == "secret") != (entry["alg"] == HMAC):
                raise KeyFileError(f"{at}: alg {entry['alg']!r} does not take a {field!r} key")
            keys.append(Key(entry["id"], entry["alg"], _b64(entry, field, at), field != "public"))
        return cls(tuple(keys), body.get("sign_with"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> KeyRing:
        path = Path(path)
        ring = cls.from_json(path.read_bytes(), str(path))
        if ring.has_secrets and path.stat().st_mode & 0o077:
            raise KeyFileError(f"{path} holds private keys but is readable by group or others: chmod 600 {path}")
        return ring

    @property
    def has_secrets(self) -> bool:
        return any(k.private for k in self.keys)

    def save(self, path: str | os.PathLike, *, public_only: bool = False) -> None:
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if not public_only else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.to_json(public_only=public_only))


def signature_file(key_id: str) -> str:
    return f"signature.{key_id}.json"


def is_signature_file(name: str) -> bool:
    return name.startswith("signature.") and name.endswith(".json")


def generate(key_id: str, alg: str = ED25519) -> KeyRing:
    """A new ring of one private key, signing with it."""
    material = os.urandom(32)
    return KeyRing((Key(key_id, alg, material, True),), key_id)


def add_key(ring: KeyRing, key: Key, *, sign_with: bool) -> KeyRing:
    """``ring`` with ``key`` added (rotation step 1) and optionally made the signing key (step 2)."""
    return KeyRing((*ring.keys, key), key.key_id if sign_with else ring.sign_with)


# --------------------------------------------------------------------------- the command-line edge

KEY_FILE_ENV = "STREAMSCORE_SIGNING_KEY_FILE"


def add_trust_arguments(parser, *, signs: bool) -> None:
    """``--signing-key-file`` and ``--allow-unsigned`` for a command that reads (and, with ``signs``, writes) versions."""
    what = "signs the versions this command writes and " if signs else ""
    parser.add_argument("--signing-key-file", default=None,
                        help=f"registry key ring (JSON, see docs/security.md): its sign_with key {what}every key "
                             f"verifies what is read; default ${KEY_FILE_ENV}")
    parser.add_argument("--allow-unsigned", action="store_true",
                        help="LOCAL DEVELOPMENT ONLY: read and write versions without signatures (checksums only); "
                             "whoever can write the registry can then run code in this process")


def keys_or_exit(parser, args, *, signs: bool) -> KeyRing | None:
    """:func:`keys_from_args` for a command line: a bad or missing key ring ends it with ``parser.error``."""
    try:
        return keys_from_args(args, signs=signs)
    except KeyFileError as exc:
        parser.error(str(exc))


def keys_from_args(args, *, signs: bool, env=os.environ) -> KeyRing | None:
    """The key ring the flags name, ``None`` with ``--allow-unsigned``; refuses to guess when neither is given."""
    path = args.signing_key_file or env.get(KEY_FILE_ENV) or None
    if path and args.allow_unsigned:
        raise KeyFileError("give --signing-key-file or --allow-unsigned, not both")
    if not path:
        if args.allow_unsigned:
            return None
        raise KeyFileError("the registry's versions are verified with a key ring: give --signing-key-file FILE "
                           f"(or ${KEY_FILE_ENV}; make one with `streamscore registry keygen`) or, for local "
                           "development only, --allow-unsigned")
    try:
        ring = KeyRing.load(path)
    except FileNotFoundError:
        raise KeyFileError(f"--signing-key-file {path} does not exist") from None
    if signs and not ring.can_sign:
        raise KeyFileError(f"--signing-key-file {path} has no sign_with key: this command writes versions and "
                           "must sign them (a verify-only ring is for predictors)")
    return ring
