"""Regenerate the Python gRPC code from protos/internvideo/v1/*.proto.

Run from anywhere: ``python -m protos.generate``. With ``--check`` it writes to a
temporary folder and exits 1 if the committed code differs (the tests call it).
"""
from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "protos" / "internvideo" / "v1"


def generate(out_root: Path) -> list[Path]:
    """Compile every proto into ``out_root/protos/internvideo/v1`` and return the files written."""
    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{REPO}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(REPO)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    out_dir = out_root / "protos" / "internvideo" / "v1"
    return sorted(p for p in out_dir.iterdir() if p.suffix in {".py", ".pyi"} and p.name != "__init__.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args(argv)
    if not args.check:
        written = generate(REPO)
        print("\n".join(str(p.relative_to(REPO)) for p in written))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [p.name for p in fresh if not (PROTO_DIR / p.name).exists()
                 or not filecmp.cmp(p, PROTO_DIR / p.name, shallow=False)]
    if stale:
        print(f"generated code is stale: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
