"""Regenerates varstore's protobuf and gRPC code from proto/varstore/v1/*.proto.

Usage: python scripts/gen_protos.py [--check]

The generated modules live in common/varstore/proto/ (installed as ``varstore.proto``), which
both the server and the client import. With --check nothing is written; the exit code is 1 when the
checked-in files differ from what the protos generate now.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "proto" / "varstore" / "v1"
TARGET = ROOT / "common" / "varstore" / "proto"
# The import path of the generated package; protoc's virtual path makes the generated
# imports read `from varstore.proto import ...` without rewriting.
IMPORT_PATH = "varstore/proto"


def generate(out: Path) -> list[Path]:
    """Runs protoc on every .proto into ``out``; returns the generated files."""
    protos = sorted(SOURCE.glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{IMPORT_PATH}={SOURCE}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(f"{IMPORT_PATH}/{p.name}" for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / IMPORT_PATH).glob("*_pb2*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        stale = [g.name for g in generated
                 if not (TARGET / g.name).exists() or not filecmp.cmp(g, TARGET / g.name, False)]
        extra = {p.name for p in TARGET.glob("*_pb2*")} - {g.name for g in generated}
        if args.check:
            for name in sorted(stale) + sorted(extra):
                print(f"stale generated file: common/varstore/proto/{name}", file=sys.stderr)
            return 1 if stale or extra else 0
        for name in extra:
            (TARGET / name).unlink()
        for g in generated:
            shutil.copyfile(g, TARGET / g.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
