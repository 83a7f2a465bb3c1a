"""The Dockerfiles, parsed (no docker daemon here: the images are built by Cloud Build, deploy/README.md).

Checked: every base image is pinned (a tag other than latest, or a digest), the predictor image's
final stage runs as a non-root user, every image installs with ``-c constraints.txt``, nothing
that looks like a secret or local state is copied, and the paths copied exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "predictor": ROOT / "deploy/k8s/predictor.Dockerfile",
    "launcher": ROOT / "deploy/dataflow/Dockerfile",
    "worker": ROOT / "deploy/dataflow/worker.Dockerfile",
}
SECRET_LIKE = re.compile(r"(\.pem|\.key|\.p12|token|secret|credential|\.env\b|id_rsa|\.json$)", re.I)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def base_images(steps: list[tuple[str, str]]) -> list[str]:
    args = {}
    images = []
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args.setdefault(name, value)
        elif word == "FROM":
            image = rest.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


def test_the_parser_joins_continuations_and_drops_comments(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text("# c\nARG B=python:3.11.14-slim\nFROM ${B} AS x\nRUN a \\\n && b\nUSER 1:1\n")
    assert instructions(path) == [("ARG", "B=python:3.11.14-slim"), ("FROM", "${B} AS x"), ("RUN", "a   && b"),
                                  ("USER", "1:1")]
    assert base_images(instructions(path)) == ["python:3.11.14-slim"]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_bases_are_pinned_and_installs_use_the_constraints(name):
    steps = instructions(DOCKERFILES[name])
    stages = {rest.split()[-1] for word, rest in steps if word == "FROM" and " AS " in rest.upper()}
    for image in base_images(steps):
        if image in stages:
            continue
        tag = image.rsplit("/", 1)[-1]
        assert "@sha256:" in image or (":" in tag and not tag.endswith(":latest")), image
    installs = [rest for word, rest in steps if word == "RUN" and "pip install" in rest]
    assert installs and all("-c constraints.txt" in rest for rest in installs)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_nothing_secret_or_local_is_copied(name):
    for word, rest in instructions(DOCKERFILES[name]):
        if word in ("COPY", "ADD"):
            assert word == "COPY", "ADD fetches URLs and unpacks archives: use COPY"
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            if "--from=" in rest:
                continue
            for source in sources:
                assert not SECRET_LIKE.search(source), source
                assert source not in (".", "./") and (ROOT / source).exists(), source
        assert not (word in ("ENV", "ARG") and re.search(r"(TOKEN|PASSWORD|SECRET|KEY)\w*=", rest, re.I)), rest


def test_the_predictor_runs_as_non_root_with_streamscore_serve():
    steps = instructions(DOCKERFILES["predictor"])
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["streamscore"]') in final
    assert len([w for w, _ in steps if w == "FROM"]) == 2  # multi-stage: no pip or build cache in the final image


def test_the_dockerignore_keeps_local_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "*.pem", "*.key", "registry"} <= set(ignored)


def test_the_worker_image_is_beams_sdk_of_the_pinned_version():
    (image,) = base_images(instructions(DOCKERFILES["worker"]))
    beam = next(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("apache-beam=="))
    assert image == f"apache/beam_python3.11_sdk:{beam.split('==')[1]}"
    launcher = base_images(instructions(DOCKERFILES["launcher"]))[0]
    assert launcher.startswith("gcr.io/dataflow-templates-base/python311-template-launcher-base:")
