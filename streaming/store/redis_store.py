"""The online store on Redis: the stream's ordered writer and the predictor's one-round-trip reader.

Keys are ``{prefix}:{spec_hash[:16]}:c:{customer_id}`` and ``...:t:{terminal_id}``; values are
:mod:`streaming.store.encoding` bytes, whose first 39 bytes are the state's version. Writes go
through a small Lua script (compare-and-set): a value is stored only if its version is larger
than the stored one, so a stale, reordered or retried write never moves a key backwards. Every
value expires ``ttl_ms`` after it was last written (the longest window + delay + lateness).

Redis unreachable: :meth:`StoreWriter.write` keeps the newest value of each key it could not
write and a background thread retries them with capped exponential backoff until Redis is back
(newer writes of a key replace its waiting value). The job's bundles never wait for Redis, so
scoring goes on and no event is lost or dead-lettered because of the store.

Clients are cached per process (:func:`writer_for`): the local runner calls a DoFn's
setup() for every bundle, and a connection per bundle would cost more than the writes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from streaming.features.spec import DAY_NS, FeatureSpec
from streaming.store.encoding import StateDecodeError, StoredState, decode_state, version_of

KEY_PREFIX = "ss"
SCHEMES = ("redis", "rediss", "unix")

#: KEYS[1] = key; ARGV = version, value, ttl ms. Returns 1 (stored) or 0 (stored version is >= : stale).
#: Versions are fixed-width digit strings, so Lua's string order (strcoll) is numeric order.
CAS_SCRIPT = """
local current = redis.call('GETRANGE', KEYS[1], 0, 38)
if current ~= '' and current >= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class StoreUnavailableError(RuntimeError):
    """The online store could not be reached (connection refused, timeout, ...)."""


def check_url(url: str, field: str = "--online-store") -> str:
    """``url`` if it is a redis://HOST:PORT/DB, rediss://[:PASSWORD@]HOST:PORT/DB or unix:// URL, else ValueError."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"{field} must be a URL such as redis://127.0.0.1:6379/0, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{field} must start with redis://, rediss:// or unix://, got {url!r}")
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ValueError(f"{field} must name a host (redis://HOST:PORT/DB), got {url!r}")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"{field} has an invalid port, got {url!r}") from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"{field} database must be a number (redis://HOST:PORT/DB), got {db!r}")
    return url


def ttl_ms(spec: FeatureSpec, allowed_lateness_days: float) -> int:
    """How long a key lives after its last write: longest window + delay + allowed lateness."""
    longest = max(spec.customer_windows[-1], spec.terminal_windows[-1])
    return int((longest + spec.delay_days) * DAY_NS // 1_000_000 + allowed_lateness_days * 86_400_000)


@dataclass(frozen=True)
class StoreConfig:
    """Where the online store is and how keys of one feature spec are named there."""

    url: str
    spec_hash: str
    ttl_ms: int
    prefix: str = KEY_PREFIX
    socket_timeout: float = 1.0

    def __post_init__(self):
        check_url(self.url)
        if self.ttl_ms < 1:
            raise ValueError(f"ttl_ms must be >= 1, got {self.ttl_ms}")

    @classmethod
    def for_spec(cls, url: str, spec: FeatureSpec, allowed_lateness_days: float, **kw) -> StoreConfig:
        return cls(url, spec.spec_hash, ttl_ms(spec, allowed_lateness_days), **kw)

    def customer_key(self, customer_id: str) -> str:
        return f"{self.prefix}:{self.spec_hash[:16]}:c:{customer_id}"

    def terminal_key(self, terminal_id: str) -> str:
        return f"{self.prefix}:{self.spec_hash[:16]}:t:{terminal_id}"

    def client(self, timeout: float | None = None, *, dedicated: bool = False) -> redis.Redis:
        """A redis-py client; ``dedicated``: one connection of its own, not a pool (no pool
        checkout per command: ~5-10 us less per round trip; thread-safe by redis-py's lock)."""
        timeout = self.socket_timeout if timeout is None else timeout
        return redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                    single_connection_client=dedicated)


@dataclass
class WriterStats:
    """Cumulative counts of one process's writer (the job turns deltas into Beam metrics)."""

    written: int = 0       # values stored
    stale: int = 0         # values refused by the compare-and-set (the store had newer state)
    failures: int = 0      # write attempts that failed (Redis unreachable, ...)
    waiting: int = 0       # values waiting for a retry right now (a gauge)

    def minus(self, other: WriterStats) -> WriterStats:
        return WriterStats(self.written - other.written, self.stale - other.stale,
                           self.failures - other.failures, self.waiting)


class StoreWriter:
    """Pipelined, ordered writes of encoded states; retries in the background while Redis is down."""

    def __init__(self, config: StoreConfig, *, min_backoff: float = 0.05, max_backoff: float = 2.0):
        self.config = config
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._client = config.client()
        self._script = self._client.register_script(CAS_SCRIPT)
        self._lock = threading.Lock()
        self._waiting: dict[str, bytes] = {}
        self._retrier: threading.Thread | None = None
        self.stats = WriterStats()
        self._reported = WriterStats()

    def write(self, values: dict[str, bytes]) -> None:
        """Store each ``key -> encoded state`` unless the store holds a newer version (never blocks on retries)."""
        if not values:
            return
        with self._lock:
            if self._waiting:  # Redis was down: queue behind the waiting values (the retrier writes them)
                self._merge(values)
                return
        try:
            self._send(values)
        except redis.RedisError:
            with self._lock:
                self.stats.failures += 1
                self._merge(values)
                self._start_retrier()

    def _merge(self, values: dict[str, bytes]) -> None:
        waiting = self._waiting
        for key, value in values.items():
            old = waiting.get(key)
            if old is None or version_of(old) < version_of(value):
                waiting[key] = value
        self.stats.waiting = len(waiting)

    def _send(self, values: dict[str, bytes]) -> None:
        pipe = self._client.pipeline(transaction=False)
        ttl, script = self.config.ttl_ms, self._script
        for key, value in values.items():
            script(keys=[key], args=[value[:39], value, ttl], client=pipe)
        results = pipe.execute()
        stored = sum(1 for r in results if r == 1)
        with self._lock:
            self.stats.written += stored
            self.stats.stale += len(results) - stored

    def _start_retrier(self) -> None:
        if self._retrier is None or not self._retrier.is_alive():
            self._retrier = threading.Thread(target=self._retry, name="online-store-retry", daemon=True)
            self._retrier.start()

    def _retry(self) -> None:
        backoff = self.min_backoff
        while True:
            time.sleep(backoff)
            with self._lock:
                batch = dict(self._waiting)
            if not batch:
                return
            try:
                self._send(batch)
            except redis.RedisError:
                with self._lock:
                    self.stats.failures += 1
                backoff = min(self.max_backoff, backoff * 2)
                continue
            with self._lock:
                for key, value in batch.items():
                    if self._waiting.get(key) is value:
                        del self._waiting[key]
                self.stats.waiting = len(self._waiting)
                if not self._waiting:
                    self._retrier = None
                    return
            backoff = self.min_backoff

    def take_stats(self) -> WriterStats:
        """What happened since the last call (``waiting`` is the current number)."""
        with self._lock:
            now = WriterStats(**vars(self.stats))
            delta = now.minus(self._reported)
            self._reported = now
        return delta

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is waiting for a retry (tests, shutdown); True if so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._waiting:
                    return True
            time.sleep(0.01)
        return False


_WRITERS: dict[tuple[StoreConfig, str], StoreWriter] = {}
_WRITERS_LOCK = threading.Lock()


def writer_for(config: StoreConfig, user: str = "") -> StoreWriter:
    """This process's writer for ``config`` and ``user`` (e.g. the stage: its counts are its own),
    created once and shared by every bundle and DoFn instance."""
    key = (config, user)
    writer = _WRITERS.get(key)
    if writer is None:
        with _WRITERS_LOCK:
            writer = _WRITERS.get(key)
            if writer is None:
                writer = _WRITERS[key] = StoreWriter(config)
    return writer


class StoreReader:
    """The predictor's read side: a card's and a terminal's state in one round trip (MGET), on a
    connection of its own; :meth:`fetch_many`: many pairs in one MGET (a ScoreStream batch)."""

    def __init__(self, config: StoreConfig, spec: FeatureSpec, *, timeout: float = 0.25):
        if config.spec_hash != spec.spec_hash:
            raise ValueError(f"store keys are for feature spec {config.spec_hash[:12]}, the model's is "
                             f"{spec.spec_hash[:12]}")
        self.config = config
        self.spec = spec
        self._timeout = timeout
        self._dedicated: redis.Redis | None = None  # connected on first use (the store may be down at start)

    @property
    def _client(self) -> redis.Redis:
        client = self._dedicated
        if client is None:  # redis-py connects a dedicated client at once: RedisError while the store is down
            client = self._dedicated = self.config.client(self._timeout, dedicated=True)
        return client

    def fetch(self, customer_id: str, terminal_id: str, transaction_id: str | None = None
              ) -> tuple[StoredState | None, StoredState | None]:
        """The stored states (None for a key the store does not have); StoreUnavailableError if unreachable.

        With ``transaction_id``, the states are throw-away copies to featurise that transaction
        (``decode_state(..., for_transaction=)``: their ids are decoded only if needed)."""
        config = self.config
        try:
            customer, terminal = self._client.mget((config.customer_key(customer_id), config.terminal_key(terminal_id)))
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"online store {redact(config.url)} is unreachable: "
                                        f"{type(exc).__name__}: {exc}") from None
        return (self.decode(customer, "customer", transaction_id),
                self.decode(terminal, "terminal", transaction_id))

    def fetch_many(self, pairs) -> list:
        """The stored values of many (customer_id, terminal_id) pairs in one MGET: a list of
        (customer bytes | None, terminal bytes | None), in order (decode each with :meth:`decode`).
        StoreUnavailableError if unreachable."""
        config = self.config
        keys = []
        for customer_id, terminal_id in pairs:
            keys.append(config.customer_key(customer_id))
            keys.append(config.terminal_key(terminal_id))
        try:
            values = self._client.mget(keys) if keys else []
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"online store {redact(config.url)} is unreachable: "
                                        f"{type(exc).__name__}: {exc}") from None
        return list(zip(values[0::2], values[1::2]))

    def decode(self, value: bytes | None, kind: str, transaction_id: str | None = None) -> StoredState | None:
        """One fetched value as a state of ``kind`` (None: the store had none); StoreUnavailableError if unreadable."""
        if value is None:
            return None
        try:
            stored = decode_state(value, self.spec, for_transaction=transaction_id)
        except StateDecodeError as exc:
            raise StoreUnavailableError(f"online store holds an unreadable {kind} state: {exc}") from None
        if stored.kind != kind:
            raise StoreUnavailableError(f"online store holds a {stored.kind} state under a {kind} key")
        return stored

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
