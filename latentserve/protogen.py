"""Builds the Python protobuf + gRPC code from protos/ into latentserve/v1/: the one command for it.

    python -m latentserve.protogen        (install, tests and the Docker image all run this)
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT  # protos/latentserve/v1/x.proto -> ./latentserve/v1/x_pb2.py (package latentserve.v1)


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "latentserve" / "v1").glob("*.proto"))


def is_stale() -> bool:
    """True when any generated module is missing or older than its .proto."""
    for proto in proto_files():
        gen = OUT / "latentserve" / "v1" / (proto.stem + "_pb2.py")
        if not gen.exists() or gen.stat().st_mtime < proto.stat().st_mtime:
            return True
    return False


def generate() -> list[Path]:
    from grpc_tools import protoc  # heavy; only needed here
    import grpc_tools

    protos = proto_files()
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={OUT}", f"--pyi_out={OUT}",
            f"--grpc_python_out={OUT}", *map(str, protos)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: " + " ".join(args))
    return protos


def main() -> int:
    protos = generate()
    print(f"generated latentserve.v1 from {len(protos)} proto file(s) into {OUT / 'latentserve' / 'v1'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
