"""Generated protobuf code is committed; this fails when it no longer matches the .proto sources."""

import shutil

from protos import generate


def test_generated_code_is_fresh(capsys):
    assert generate.main(["--check"]) == 0, capsys.readouterr().err


def test_stale_code_is_detected(tmp_path, monkeypatch):
    # A copy of protos/ with one committed file altered must fail the check.
    root = tmp_path / "repo"
    shutil.copytree(generate.PROTO_DIR, root / "protos")
    victim = root / "protos" / "streamscore" / "v1" / "events_pb2.py"
    victim.write_text(victim.read_text() + "\n# edited by hand\n")
    monkeypatch.setattr(generate, "ROOT", root)
    monkeypatch.setattr(generate, "PROTO_DIR", root / "protos")
    assert generate.main(["--check"]) == 1
