"""The streaming job on Dataflow: the Flex Template's entry point, and the job it submits, built offline.

* :func:`launch` is what the Flex Template launcher runs (``deploy/dataflow/main.py``). The
  launcher passes every template parameter as ``--name=value``; Dataflow's parameter names use
  underscores, so ``--transactions_subscription=x`` becomes the job's ``--transactions-subscription=x``
  (Beam's own options, already underscored, pass through untouched).
* :func:`dry_run` builds the job exactly as a submission would (``DataflowRunner`` with
  ``--dry_run``, no credentials, no network) and returns the job description Dataflow would
  receive (``environment``, worker pools, the SDK container, experiments) with the runner's
  pipeline proto. Beam's ``--dataflow_job_file`` is not written on a dry run (the file is
  written by the API client, after staging), so the environment is assembled here with Beam's
  own ``apiclient.Environment``.
* ``python -m streaming.job.dataflow steps`` prints the transform names of the reference graphs;
  ``tests/deploy/expected_dataflow_steps.json`` holds them, so a renamed transform (which would
  break ``--update`` of a running job) fails a test unless that file is regenerated on purpose::

      PYTHONPATH=. python -m streaming.job.dataflow steps > tests/deploy/expected_dataflow_steps.json

  ``python -m streaming.job.dataflow job ARGS...`` prints the whole offline job description.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
import sys
from dataclasses import dataclass
from typing import Any

from apache_beam.portability.api import beam_runner_api_pb2

#: ``streamscore stream`` flags that mean nothing on Dataflow (the emulator and the local runner's tuning);
#: with :data:`LAUNCHER_FLAGS` they are the only flags the Flex Template's metadata.json leaves out.
LOCAL_ONLY_FLAGS = frozenset({"--emulator-host", "--local-pull-size", "--local-pull-deadline", "--no-local-tuning",
                              "--allow-unsigned"})  # unsigned registries: local development only, never offered
#: Flags the Flex Template launcher passes itself: ``--project`` is the job's project (Pub/Sub's too).
LAUNCHER_FLAGS = frozenset({"--project"})

PUBSUB_READ = "beam:transform:pubsub_read:v1"

#: The options of an offline build: a well-formed project and bucket (never contacted), no credentials.
OFFLINE_ARGS = (
    "--runner=DataflowRunner", "--project=streamscore-prod", "--region=europe-west1",
    "--job_name=streamscore-stream", "--temp_location=gs://streamscore-prod-dataflow/tmp",
    "--staging_location=gs://streamscore-prod-dataflow/staging", "--no_auth", "--sdk_location=container",
    "--sdk_container_image=europe-west1-docker.pkg.dev/streamscore-prod/streamscore/worker:reference",
    "--enable_streaming_engine", "--autoscaling_algorithm=THROUGHPUT_BASED", "--max_num_workers=20",
)

#: The graphs whose step names are pinned (tests/deploy/expected_dataflow_steps.json): the job as
#: deployed (scoring + online learning) and the features-only job.
REFERENCE_GRAPHS: dict[str, tuple[str, ...]] = {
    "scoring": ("--predictor=dns:///predictor.streamscore.svc.cluster.local:50051",
                "--registry=gs://streamscore-prod-registry/registry"),
    "features": (),
}


def job_flags() -> dict[str, argparse.Action]:
    """Every long flag of ``streamscore stream`` (but ``--help``) -> its argparse action."""
    from streaming.job.pipeline import build_parser

    return {opt: action for action in build_parser()._actions for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"}


def flex_argv(argv: list[str]) -> list[str]:
    """Template parameters (``--transactions_subscription=x``) -> the job's flags (``--transactions-subscription=x``)."""
    flags, out = job_flags(), []
    for arg in argv:
        name, eq, value = arg.partition("=")
        hyphenated = name.replace("_", "-")
        if name.startswith("--") and name not in flags and hyphenated in flags:
            action = flags[hyphenated]
            if action.nargs == 0:  # a store_true flag arrives as --name=true|false
                if value.lower() not in ("", "true", "false"):
                    raise ValueError(f"{name} is a switch: expected true or false, got {value!r}")
                out.extend([hyphenated] if value.lower() != "false" else [])
                continue
            arg = hyphenated + eq + value
        out.append(arg)
    return out


def launch(argv: list[str] | None = None) -> int:
    """The Flex Template entry point: submit the job and return (the launcher must exit)."""
    from streaming.job.pipeline import run

    return run(flex_argv(sys.argv[1:] if argv is None else argv))


@dataclass(frozen=True)
class DryRun:
    """What a submission would send: the job description (JSON) and the runner's pipeline proto."""

    job: dict[str, Any]
    pipeline: beam_runner_api_pb2.Pipeline

    def step_names(self) -> list[str]:
        """Every transform's full name, sorted (the names ``--update`` matches state by)."""
        return sorted(t.unique_name for t in self.pipeline.components.transforms.values() if t.unique_name)

    def pubsub_reads(self) -> dict[str, beam_runner_api_pb2.PubSubReadPayload]:
        """Transform name -> what it reads (topic or subscription, attributes, id and timestamp attributes)."""
        return {t.unique_name: beam_runner_api_pb2.PubSubReadPayload.FromString(t.spec.payload)
                for t in self.pipeline.components.transforms.values() if t.spec.urn == PUBSUB_READ}

    def container_images(self) -> set[str]:
        return {beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
                for env in self.pipeline.components.environments.values()}


def dry_run(argv: list[str]) -> DryRun:
    """Build ``streamscore stream ARGV`` for DataflowRunner without submitting it (no credentials, no network)."""
    from apache_beam.runners.dataflow.internal import apiclient

    from streaming.job.pipeline import build

    with tempfile.TemporaryDirectory() as tmp:
        if any(a.startswith("--registry") for a in argv) and not any(a.startswith("--signing-key-file") for a in argv):
            # The deployed learner signs its snapshots: build with a throw-away ring (only its path is in the graph).
            from models.signing import generate

            ring = Path(tmp) / "signing-key.json"
            generate("dry-run").save(ring)
            argv = [*argv, f"--signing-key-file={ring}"]
        pipeline, _ = build([*argv, "--dry_run=True", "--no_auth"])
        job = pipeline.run().job
    job.proto.environment = apiclient.Environment(
        packages=[], options=job.options, environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url=f"{job.google_cloud_options.staging_location}/pipeline.pb",
        proto_pipeline=job.proto_pipeline).proto
    return DryRun(json.loads(job.json()), job.proto_pipeline)


def reference_steps() -> dict[str, list[str]]:
    return {name: dry_run([*OFFLINE_ARGS, *extra]).step_names() for name, extra in REFERENCE_GRAPHS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming.job.dataflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("steps", help="the reference graphs' transform names (tests/deploy/expected_dataflow_steps.json)")
    job = sub.add_parser("job", help="the offline job description of `streamscore stream ARGS` on Dataflow")
    job.add_argument("args", nargs=argparse.REMAINDER, help="job and Beam flags (default: the reference options)")
    args = parser.parse_args(argv)
    if args.command == "steps":
        out: Any = reference_steps()
    else:
        out = dry_run(args.args or [*OFFLINE_ARGS, *REFERENCE_GRAPHS["scoring"]]).job
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
