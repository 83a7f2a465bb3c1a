"""A local Pub/Sub: start the official emulator, point clients at it, create topics, pull back.

:class:`PubSubEmulator` launches Google's emulator (Java) in its own process group, waits
until it answers, and stops the whole group again (also at interpreter exit)::

    with PubSubEmulator() as emulator:
        emulator.ensure(Topics().all(), {"transactions-sub": "transactions"})
        publisher = emulator.publisher_client()

Clients are built with :func:`publisher_client` / :func:`subscriber_client`, which do what
the google-cloud-pubsub library does when ``PUBSUB_EMULATOR_HOST`` is set (an insecure
gRPC channel to ``host:port``, no credentials) without touching ``os.environ``.
:meth:`PubSubEmulator.env` gives that variable for child processes (e.g. a Beam job).

The emulator is found from, in order: the ``binary`` argument, ``$PUBSUB_EMULATOR_BIN``
(the only environment variable read here), the usual Cloud SDK roots, the SDK that
``gcloud`` on ``PATH`` belongs to, and last ``gcloud beta emulators pubsub start``.

:func:`pull_all` synchronously pulls (and acks) until a count or a time limit is reached;
the tests and the load tester use it to check what arrived.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass
from datetime import datetime
from pathlib import Path

DEFAULT_PROJECT = "local-project"
SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")
_EMULATOR_RELPATH = Path("platform", "pubsub-emulator", "bin", "cloud-pubsub-emulator")
_GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class EmulatorError(RuntimeError):
    """The emulator could not be found, started or stopped."""


class EmulatorNotFound(EmulatorError):
    """No emulator binary (or no Java to run it) on this machine."""


@dataclass(frozen=True)
class Topics:
    """The project's topic names (configurable; these are the defaults)."""

    transactions: str = "transactions"
    labels: str = "labels"
    scores: str = "scores"
    dead_letter: str = "dead-letter"
    alerts: str = "alerts"
    monitoring: str = "monitoring"

    def all(self) -> tuple[str, ...]:
        return astuple(self)


def topic_path(project: str, name: str) -> str:
    return f"projects/{project}/topics/{name}"


def subscription_path(project: str, name: str) -> str:
    return f"projects/{project}/subscriptions/{name}"


# --------------------------------------------------------------------------- clients


def publisher_client(host_port: str, batch_settings=(), publisher_options=()):
    """A ``pubsub_v1.PublisherClient`` talking to the emulator at ``host_port``."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    channel = grpc.insecure_channel(host_port, options=_GRPC_OPTIONS)
    transport = PublisherGrpcTransport(channel=channel, host=host_port)
    return pubsub_v1.PublisherClient(batch_settings, publisher_options, transport=transport)


def subscriber_client(host_port: str):
    """A ``pubsub_v1.SubscriberClient`` talking to the emulator at ``host_port``."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(host_port, options=_GRPC_OPTIONS)
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel, host=host_port))


@dataclass(frozen=True)
class Received:
    """One pulled message."""

    data: bytes
    attributes: dict[str, str]
    publish_time: datetime
    message_id: str


def pull_all(subscriber, subscription_path: str, expected: int, timeout: float, *,
             settle: float = 0.0, max_messages: int = 1000) -> list[Received]:
    """Pull and ack from ``subscription_path`` until ``expected`` messages came or ``timeout`` s passed.

    With ``settle > 0`` it keeps pulling that many seconds after the count is reached, so
    extra messages (duplicates, redeliveries) show up in the result instead of going unseen.
    Returns everything received, in arrival order; never more waiting than ``timeout`` (+ one
    pull's deadline of at most 1 s).
    """
    from google.api_core import exceptions

    out: list[Received] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    while True:
        now = time.monotonic()
        if settle_until is None and len(out) >= expected:
            settle_until = now + settle
        stop_at = deadline if settle_until is None else min(deadline, settle_until)
        if now >= stop_at:
            return out
        try:
            response = subscriber.pull(
                request={"subscription": subscription_path, "max_messages": max_messages},
                timeout=max(0.05, min(1.0, stop_at - now)), retry=None)
        except (exceptions.DeadlineExceeded, exceptions.ServiceUnavailable):
            continue
        ack_ids = []
        for item in response.received_messages:
            msg = item.message
            out.append(Received(bytes(msg.data), dict(msg.attributes), msg.publish_time, msg.message_id))
            ack_ids.append(item.ack_id)
        for start in range(0, len(ack_ids), 1000):
            subscriber.acknowledge(request={"subscription": subscription_path,
                                            "ack_ids": ack_ids[start:start + 1000]})


# --------------------------------------------------------------------------- finding it


def _java_available() -> bool:
    java_home = os.environ.get("JAVA_HOME")
    return bool(shutil.which("java") or (java_home and Path(java_home, "bin", "java").exists()))


def find_emulator(binary: str | os.PathLike | None = None) -> list[str]:
    """The command prefix that starts the emulator (see the module docstring for the order).

    Raises :class:`EmulatorNotFound` with the reason when there is none.
    """
    candidates: list[Path] = []
    if binary is not None:
        candidates.append(Path(binary))
    elif os.environ.get("PUBSUB_EMULATOR_BIN"):
        candidates.append(Path(os.environ["PUBSUB_EMULATOR_BIN"]))
    else:
        candidates += [Path(root) / _EMULATOR_RELPATH for root in SDK_ROOTS]
        gcloud = shutil.which("gcloud")
        if gcloud:
            candidates.append(Path(gcloud).resolve().parent.parent / _EMULATOR_RELPATH)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            if not _java_available():
                raise EmulatorNotFound(f"the Pub/Sub emulator at {path} needs Java, and no java is on PATH or JAVA_HOME")
            return [str(path)]
    if binary is not None or os.environ.get("PUBSUB_EMULATOR_BIN"):
        raise EmulatorNotFound(f"the Pub/Sub emulator binary {str(candidates[0])!r} does not exist or is not executable")
    gcloud = shutil.which("gcloud")
    if gcloud:
        return [gcloud, "beta", "emulators", "pubsub", "start"]
    raise EmulatorNotFound("no Pub/Sub emulator found: install the Cloud SDK component 'pubsub-emulator' "
                           "(and Java), or set PUBSUB_EMULATOR_BIN")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a live member; zombies don't count (on Linux).

    Killed grandchildren stay zombies until init reaps them, which can take a while in a
    container; they hold no port and no memory, so waiting for them would only slow down stop().
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
            if int(pgrp) == pgid and state not in ("Z", "X"):
                return True
    return False


# --------------------------------------------------------------------------- the emulator


class PubSubEmulator:
    """The Pub/Sub emulator as a context manager. Arguments are the configuration, stored as given."""

    def __init__(self, project: str = DEFAULT_PROJECT, host: str = "127.0.0.1", port: int | None = None,
                 data_dir: str | os.PathLike | None = None, startup_timeout: float = 60.0,
                 binary: str | os.PathLike | None = None):
        self.project = project
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.startup_timeout = startup_timeout
        self.binary = binary
        self._proc: subprocess.Popen | None = None
        self._port: int | None = None
        self._dir: Path | None = None
        self._own_dir = False
        self._log = None

    # -- lifecycle
    def __enter__(self) -> PubSubEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> PubSubEmulator:
        """Launch the emulator and wait until it answers; raises :class:`EmulatorError`."""
        if self._proc is not None:
            return self
        command = find_emulator(self.binary)
        self._own_dir = self.data_dir is None
        self._dir = Path(tempfile.mkdtemp(prefix="pubsub-emulator-") if self._own_dir else self.data_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        attempts = 3 if self.port is None else 1  # a picked free port can be taken meanwhile
        for attempt in range(1, attempts + 1):
            self._port = self.port if self.port is not None else _free_port(self.host)
            self._launch(command)
            try:
                self._wait_ready()
                return self
            except EmulatorError as exc:
                self._terminate()
                if attempt == attempts or "already in use" not in str(exc).lower():
                    self.stop()
                    raise
        return self  # unreachable

    def _launch(self, command: list[str]) -> None:
        if command[-1] == "start":  # gcloud wrapper
            args = [*command, f"--host-port={self.host}:{self._port}", f"--project={self.project}"]
        else:
            args = [*command, f"--host={self.host}", f"--port={self._port}"]
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=self._dir)

    def _wait_ready(self) -> None:
        url = f"http://{self.host_port}/"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise EmulatorError(f"the Pub/Sub emulator exited with code {self._proc.returncode} "
                                    f"before answering on {self.host_port}; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200 and response.read().strip() == b"Ok":
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise EmulatorError(f"the Pub/Sub emulator did not answer on {url} within "
                                    f"{self.startup_timeout:g} s; log tail:\n{self.log_tail()}")
            time.sleep(0.1)

    def _terminate(self) -> None:
        """SIGTERM the process group, wait up to 10 s, then SIGKILL; reap our child."""
        proc, self._proc = self._proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the child leads its own group
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + 10.0
            try:
                proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                pass
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _group_alive(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=10.0)
            deadline = time.monotonic() + 5.0  # grandchildren (java under gcloud) are reaped by init
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the whole process group and remove the temporary data dir. Idempotent."""
        self._terminate()
        atexit.unregister(self.stop)
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- facts
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The emulator's process id, which is also its process group id (``None`` when stopped)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def host_port(self) -> str:
        if self._port is None:
            raise EmulatorError("the emulator has not been started")
        return f"{self.host}:{self._port}"

    @property
    def log_path(self) -> Path:
        return self._dir / "emulator.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def env(self) -> dict[str, str]:
        """The environment a child process needs to use this emulator."""
        return {"PUBSUB_EMULATOR_HOST": self.host_port}

    # -- clients and resources
    def publisher_client(self, batch_settings=(), publisher_options=()):
        return publisher_client(self.host_port, batch_settings, publisher_options)

    def subscriber_client(self):
        return subscriber_client(self.host_port)

    def topic_path(self, name: str) -> str:
        return topic_path(self.project, name)

    def subscription_path(self, name: str) -> str:
        return subscription_path(self.project, name)

    def create_topic(self, name: str) -> str:
        """Create a topic (an existing one is fine); returns its path."""
        return self.ensure([name], {})[0][0]

    def create_subscription(self, topic: str, name: str, ack_deadline: int = 60) -> str:
        """Create a pull subscription on ``topic`` (an existing one is fine); returns its path."""
        return self.ensure([], {name: topic}, ack_deadline=ack_deadline)[1][0]

    def ensure(self, topics: Iterable[str], subscriptions: Mapping[str, str],
               ack_deadline: int = 60, ordering: bool = False) -> tuple[list[str], list[str]]:
        """Create the topics, then the subscriptions ``{subscription: topic}``; idempotent.

        ``ordering`` enables message ordering on the subscriptions: messages published with
        the same ordering key are delivered in publish order.
        """
        from google.api_core.exceptions import AlreadyExists

        topics = list(dict.fromkeys([*topics, *subscriptions.values()]))
        publisher = self.publisher_client()
        try:
            for name in topics:
                try:
                    publisher.create_topic(name=self.topic_path(name))
                except AlreadyExists:
                    pass
        finally:
            publisher.transport.close()
        subscriber = self.subscriber_client()
        try:
            for sub, topic in subscriptions.items():
                try:
                    subscriber.create_subscription(request={
                        "name": self.subscription_path(sub), "topic": self.topic_path(topic),
                        "ack_deadline_seconds": ack_deadline, "enable_message_ordering": ordering})
                except AlreadyExists:
                    pass
        finally:
            subscriber.close()
        return [self.topic_path(t) for t in topics], [self.subscription_path(s) for s in subscriptions]
