"""No stale docs: every ``streamscore <command>`` shown in README.md and docs/**.md exists, and
so does every ``--flag`` shown with it (in the command's ``--help``, or Beam's pipeline options for
the two Beam jobs, whose unknown flags pass through to Beam). Local links must resolve too."""

from __future__ import annotations

import contextlib
import io
import re
from functools import cache
from pathlib import Path

import pytest

from loadtest import cli as loadtest_cli
from streaming import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *ROOT.glob("docs/**/*.md")])
BEAM_JOBS = {"stream", "featurize"}  # unknown flags go to Beam's PipelineOptions
COMMAND = re.compile(r"(?<![\w./-])streamscore +([a-z][\w-]*)(?: +([a-z][\w-]*))?")
FLAG = re.compile(r"(?<![\w=/-])--[a-z][\w-]*")
#: Written on parallel branches (issues 12-15, 18); tolerated as missing only until they land.


def code_of(text: str) -> list[str]:
    """Fenced blocks (continuation lines joined) and inline code spans of a Markdown text."""
    chunks, rest = [], []
    for i, part in enumerate(re.split(r"^```[^\n]*\n", text, flags=re.M)):
        if i % 2:  # inside a fence (split alternates outside / inside)
            chunks.extend(part.replace("\\\n", " ").splitlines())
        else:
            rest.append(part)
    for part in rest:
        chunks.extend(re.findall(r"`([^`\n]+)`", part))
    return chunks


def shown_commands(text: str) -> list[tuple[str, str | None, list[str]]]:
    """``(command, sub-command or None, flags)`` for each ``streamscore ...`` in the code of ``text``."""
    found = []
    for chunk in code_of(text):
        chunk = chunk.split(" #", 1)[0]  # shell comments
        matches = list(COMMAND.finditer(chunk))
        for m, nxt in zip(matches, [*matches[1:], None]):
            segment = chunk[m.end():nxt.start() if nxt else len(chunk)]
            found.append((m.group(1), m.group(2), FLAG.findall(segment)))
    return found


@cache
def help_text(command: str, kind: str | None = None, action: str | None = None) -> str:
    """``--help`` of a command (a load-test kind, or an action such as ``registry keygen``)."""
    target = loadtest_cli.KINDS[kind][0] if kind else cli.COMMANDS[command][0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli._load(target)([action, "--help"] if action else ["--help"])
    return out.getvalue()


@cache
def beam_flags() -> frozenset[str]:
    from apache_beam.options.pipeline_options import PipelineOptions

    return frozenset("--" + name for name in PipelineOptions([]).get_all_options())


def test_the_parser_finds_commands_and_flags():
    text = "Run `streamscore train --features F --promote`.\n```bash\nstreamscore loadtest replay --rate 5 \\\n" \
           "    --json x.json  # --not-a-flag\n```\nnot code: streamscore fly --x\n"
    assert shown_commands(text) == [("loadtest", "replay", ["--rate", "--json"]),
                                    ("train", None, ["--features", "--promote"])]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_flag_shown_exists(path):
    problems = []
    for command, sub, flags in shown_commands(path.read_text()):
        if command not in cli.COMMANDS:
            problems.append(f"`streamscore {command}` is not a command (streamscore --help)")
            continue
        kind = sub if command == "loadtest" else None
        if command == "loadtest" and sub not in loadtest_cli.KINDS:
            problems.append(f"`streamscore loadtest {sub}` is not a kind of load test")
            continue
        known = set(FLAG.findall(help_text(command, kind))) | {"--help"}
        if command == "registry" and sub and not sub.startswith("-"):  # registry keygen / events / sign ...
            with contextlib.suppress(Exception):
                known |= set(FLAG.findall(help_text(command, None, sub)))
        if command in BEAM_JOBS:
            known |= beam_flags()
        problems += [f"`streamscore {command}{' ' + kind if kind else ''}` has no flag {flag}"
                     for flag in flags if flag not in known]
    assert not problems, f"{path.name}:\n" + "\n".join(sorted(set(problems)))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_resolve(path):
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if not resolved.exists():
            missing.append(target)
    assert not missing, f"{path.name} links to missing files: {missing}"
