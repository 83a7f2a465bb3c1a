"""examples/score_client.py against an in-process predictor (the fixtures of this folder)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "score_client.py"


def test_score_client_example_scores_over_score_and_score_stream(make_scorer, serve, capsys):
    spec = importlib.util.spec_from_file_location("example_score_client", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = serve(make_scorer("v7"))
    assert module.main(["--target", server.target, "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"Score: tx-1 -> 0\.\d{4} \(model v7\)", lines[0]), lines
    assert [line.split(" -> ")[0] for line in lines[1:]] == [f"ScoreStream: tx-s{i}" for i in range(3)]
    assert all(re.fullmatch(r"ScoreStream: tx-s\d -> [01]\.\d{4}", line) for line in lines[1:]), lines
