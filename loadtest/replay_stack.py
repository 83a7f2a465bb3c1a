"""``--local-stack``: the stack ``streamscore up`` runs (emulator, predictor, streaming job), without its traffic.

Reuses :mod:`streaming.demo.up`'s pieces: the production model is trained on a simulated history
when the registry has none (:func:`streaming.demo.bootstrap.ensure_production_model`), and the predictor and
the job run as ``streamscore serve`` / ``streamscore stream`` subprocesses in their own process
groups, with their logs in ``workdir``. Everything started is stopped on exit, also on errors.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from streaming.io.pubsub_local import PubSubEmulator
from streaming.demo.bootstrap import ensure_production_model, ensure_signing_keys
from streaming.demo.processes import free_port, spawn, stop_process, wait_serving
from streaming.demo.up import TOPICS

#: The job's input subscriptions (its defaults) and this load test's output subscriptions.
SCORES_SUBSCRIPTION = "scores-loadtest"
DEAD_LETTER_SUBSCRIPTION = "dead-letter-loadtest"
SUBSCRIPTIONS = {"transactions-stream": "transactions", "labels-stream": "labels",
                 SCORES_SUBSCRIPTION: "scores", DEAD_LETTER_SUBSCRIPTION: "dead-letter"}


class LocalStack:
    """Emulator + predictor (+ optional shadow predictor on ``shadow_model_file``) + streaming job."""

    def __init__(self, registry: Path, workdir: Path | None = None, *, shadow_model_file: Path | None = None,
                 snapshot_every_labels: int = 300, job_args: tuple[str, ...] = (), log=print):
        self.registry = Path(registry)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="streamscore-replay-"))
        self.shadow_model_file = shadow_model_file
        self.snapshot_every_labels = snapshot_every_labels
        self.job_args = tuple(job_args)
        self.log = log
        self.emulator: PubSubEmulator | None = None
        self.predictor = self.shadow = self.job = None
        self.predictor_target = self.shadow_target = None
        self.version: str | None = None

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log(f"local stack: starting the Pub/Sub emulator (logs in {self.workdir}) ...")
        self.emulator = PubSubEmulator(data_dir=self.workdir / "emulator").start()
        self.emulator.ensure(TOPICS, SUBSCRIPTIONS)
        up_args = SimpleNamespace(customers=100, terminals=200, history_days=60, seed=0,  # `streamscore up`'s defaults
                                  registry=self.registry, signing_key_file=None, allow_unsigned=False)
        serve_trust, job_trust = ensure_signing_keys(up_args)  # signed like `streamscore up`
        self.version = ensure_production_model(self.registry, up_args)
        port = free_port()
        self.predictor = spawn(["serve", "--registry", str(self.registry), "--host", "127.0.0.1", "--port", str(port),
                                 "--metrics-port", "0", "--poll-interval", "1", *serve_trust],
                                self.workdir / "predictor.log")
        wait_serving(port, self.predictor)
        self.predictor_target = f"127.0.0.1:{port}"
        if self.shadow_model_file is not None:
            shadow_port = free_port()
            self.shadow = spawn(["serve", "--model-file", str(self.shadow_model_file), "--host", "127.0.0.1",
                                  "--port", str(shadow_port), "--metrics-port", "0"], self.workdir / "shadow.log")
            wait_serving(shadow_port, self.shadow)
            self.shadow_target = f"127.0.0.1:{shadow_port}"
        self.job = spawn(["stream", "--project", self.emulator.project, "--emulator-host", self.emulator.host_port,
                           "--predictor", self.predictor_target, "--registry", str(self.registry),
                           "--snapshot-every-labels", str(self.snapshot_every_labels), *job_trust, *self.job_args],
                          self.workdir / "stream-job.log")
        time.sleep(1.0)
        self.check()
        self.log(f"local stack: emulator {self.emulator.host_port}, predictor {self.predictor_target} "
                 f"({self.version}), streaming job pid {self.job.pid}")
        return self

    def check(self) -> None:
        """Raise if a process of the stack has exited."""
        for name, proc in (("streaming job", self.job), ("predictor", self.predictor), ("shadow predictor", self.shadow)):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the {name} exited with code {proc.returncode}; see its log in {self.workdir}")

    def stop(self) -> None:
        for proc in (self.job, self.shadow, self.predictor):
            stop_process(proc)
        if self.emulator is not None:
            self.emulator.stop()
