"""Generate the v2 gRPC Python stubs from ``service/v2/protos/*.proto`` with grpcio-tools.

``python -m service.v2.protogen`` (or ``python service/v2/protogen.py``, which needs nothing of mcserve installed;
the Docker build runs it that way). ``make install`` runs it; the outputs are git-ignored and never edited by hand:

    service/v2/protos/mcserve_v2_pb2.py, .pyi      the messages (proto package mcserve.v2)
    service/v2/protos/inference_pb2_grpc.py        servicer, stub and add_GRPCInferenceServiceServicer_to_server
    (and inference_pb2.py/.pyi, mcserve_v2_pb2_grpc.py, which protoc always writes)

protoc runs with ``-I`` at the repository root, so the generated modules import each other as
``service.v2.protos.*``. Idempotent: files whose content would not change are left alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parents[1]
PROTO_DIR = Path("service/v2/protos")  # relative to ROOT, as protoc sees it
PROTOS = ("mcserve_v2.proto", "inference.proto")
REQUIRED = ("mcserve_v2_pb2.py", "mcserve_v2_pb2.pyi", "inference_pb2.py", "inference_pb2_grpc.py")


class ProtogenError(RuntimeError):
    """grpcio-tools is missing or protoc failed; the message says what to do."""


def _protoc() -> tuple[ModuleType, Path]:
    """grpc_tools.protoc and the folder of its bundled well-known protos (google/protobuf/*.proto)."""
    try:
        from importlib import resources

        from grpc_tools import protoc
    except ImportError as exc:
        raise ProtogenError(
            f"grpcio-tools is not installed ({exc}); it generates the gRPC stubs. Install the dev extra "
            "(`make install`, or `pip install -e '.[dev]'`) or just grpcio-tools at the version pyproject.toml pins."
        ) from exc
    return protoc, Path(str(resources.files("grpc_tools") / "_proto"))


def generate(root: Path = ROOT) -> list[tuple[Path, bool]]:
    """Run protoc over the .proto files under ``root``; returns (path, changed) for every generated file."""
    protoc, include = _protoc()
    sources = [root / PROTO_DIR / name for name in PROTOS]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise ProtogenError(f"no such .proto file: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="mcserve-protogen-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(PROTO_DIR / name) for name in PROTOS),
        ]
        cwd = os.getcwd()
        os.chdir(root)  # the .proto paths are given relative to the -I root, as they are named inside the files
        try:
            code = protoc.main(args)
        finally:
            os.chdir(cwd)
        if code != 0:
            raise ProtogenError(f"protoc failed (exit {code}) on {', '.join(str(PROTO_DIR / n) for n in PROTOS)}")
        produced = sorted((Path(tmp) / PROTO_DIR).iterdir())
        absent = [name for name in REQUIRED if not (Path(tmp) / PROTO_DIR / name).is_file()]
        if absent:
            raise ProtogenError(f"protoc did not write {', '.join(absent)}")
        results = []
        for new in produced:
            target = root / PROTO_DIR / new.name
            content = new.read_bytes()
            changed = not target.is_file() or target.read_bytes() != content
            if changed:
                target.write_bytes(content)
            results.append((target, changed))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.v2.protogen", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root holding service/v2/protos")
    args = parser.parse_args(argv)
    try:
        results = generate(args.root.resolve())
    except ProtogenError as exc:
        print(f"protogen: error: {exc}", file=sys.stderr)
        return 1
    for path, changed in results:
        print(f"protogen: {'wrote' if changed else 'unchanged'} {path}")
    return 0


if __name__ == "__main__":
    if not __package__:  # run as a file: service/v2 is sys.path[0]; its modules must not shadow grpc_tools' imports
        sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _HERE]
    sys.exit(main())
