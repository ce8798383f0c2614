"""Regenerate the committed gRPC modules from `_gen/api.proto` and `_gen/podresources.proto`.

The generated code is committed (so a node image needs no protoc); this module is the one
command that rebuilds it, and the test in tests/deviceplugin/test_proto.py checks that the
committed modules still match the proto.  Run:  python -m keti_ray.deviceplugin.codegen
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repository root: protoc is called with it as the include path so that the generated
# `api_pb2_grpc.py` imports `keti_ray.deviceplugin._gen.api_pb2` (a package path, not a
# top-level `api_pb2`).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
PROTO_REL = Path("keti_ray/deviceplugin/_gen/api.proto")  # device plugin v1beta1
PODRESOURCES_REL = Path("keti_ray/deviceplugin/_gen/podresources.proto")  # kubelet v1
PROTOS = (PROTO_REL, PODRESOURCES_REL)
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def generate(out_root: Path) -> list[Path]:
    """Compile the protos into `out_root/keti_ray/deviceplugin/_gen/`; return the files written."""
    from grpc_tools import protoc  # build-time tool, imported only when regenerating

    out_root = Path(out_root)
    (out_root / PROTO_REL.parent).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for rel in PROTOS:
        args = [
            "protoc",
            f"-I{PACKAGE_ROOT}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            str(PACKAGE_ROOT / rel),
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit status {rc} for {rel}")
        written += [out_root / rel.parent / (rel.stem + sfx) for sfx in SUFFIXES]
    return written


def main() -> None:
    written = generate(PACKAGE_ROOT)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
    sys.exit(0)
