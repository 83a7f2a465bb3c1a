"""Regenerate the committed protobuf/gRPC code: ``python -m protos.generate`` (or ``make protos``).

``--check`` regenerates into a temporary folder and exits 1 when the committed files differ
(CI's stale-code guard; ``tests/test_protos.py`` runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"


def proto_sources() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generated_names(proto: Path) -> list[str]:
    stem = proto.with_suffix("")
    names = [f"{stem.name}_pb2.py", f"{stem.name}_pb2.pyi"]
    if "service " in proto.read_text():
        names.append(f"{stem.name}_pb2_grpc.py")
    return names


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) over every ``.proto`` under ``protos/``; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    sources = proto_sources()
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(ROOT)) for p in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: " + " ".join(args))
    written = []
    for proto in sources:
        rel_dir = proto.parent.relative_to(ROOT)
        for name in generated_names(proto):
            written.append(rel_dir / name)
        # grpc_tools writes an (empty) _pb2_grpc.py even for message-only files: drop it.
        empty_grpc = out_dir / rel_dir / f"{proto.stem}_pb2_grpc.py"
        if empty_grpc.exists() and (rel_dir / empty_grpc.name) not in written:
            empty_grpc.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        written = generate(Path(tmp))
        stale = []
        for rel in written:
            fresh, committed = Path(tmp) / rel, ROOT / rel
            if args.check:
                if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                    stale.append(str(rel))
            else:
                shutil.copyfile(fresh, committed)
                print(f"wrote {rel}")
        if stale:
            print("generated protobuf code is stale; run `make protos`: " + ", ".join(stale), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
