"""The committed generated modules match api.proto, and api.proto matches the API page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from keti_ray.deviceplugin import codegen
from keti_ray.deviceplugin._gen import api_pb2

GEN_DIR = Path(codegen.__file__).parent / "_gen"
API_PAGE = Path(__file__).resolve().parents[3] / "shared/docs/deviceplugin-v1beta1.md"


def test_committed_descriptor_matches_proto(tmp_path):
    from grpc_tools import protoc

    out = tmp_path / "api.desc"
    rc = protoc.main(
        [
            "protoc",
            f"-I{codegen.PACKAGE_ROOT}",
            f"--descriptor_set_out={out}",
            str(codegen.PACKAGE_ROOT / codegen.PROTO_REL),
        ]
    )
    assert rc == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(committed)
    fresh.ClearField("source_code_info")
    for msg in list(fresh.message_type) + [n for m in fresh.message_type for n in m.nested_type]:
        for f in msg.field:
            f.ClearField("json_name")  # protoc adds it; the runtime descriptor does not keep it
    assert committed == fresh, "run: python -m keti_ray.deviceplugin.codegen"


def test_regenerated_files_are_byte_identical(tmp_path):
    import grpc_tools

    header = (GEN_DIR / "api_pb2_grpc.py").read_text()
    committed_version = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", header).group(1)
    from importlib.metadata import version

    if version("grpcio-tools") != committed_version:
        pytest.skip(
            f"grpcio-tools {version('grpcio-tools')} != {committed_version} used to generate"
        )
    assert grpc_tools
    written = codegen.generate(tmp_path)
    for path in written:
        assert path.read_bytes() == (GEN_DIR / path.name).read_bytes(), (
            f"{path.name} differs: run python -m keti_ray.deviceplugin.codegen"
        )


def _page_messages() -> dict[str, dict[str, tuple[str, int]]]:
    """The API page's message table: {message: {field: (type, number)}}."""
    out: dict[str, dict[str, tuple[str, int]]] = {}
    in_table = False
    for line in API_PAGE.read_text().splitlines():
        if line.startswith("## Messages"):
            in_table = True
            continue
        if in_table and line.startswith("## "):
            break
        m = re.match(r"^\| (\w+) \| (.*) \|$", line)
        if not in_table or not m or m.group(1) == "message":
            continue
        fields = {}
        for decl in m.group(2).split(";"):
            d = re.match(r"\s*((?:repeated )?[\w<>,]+) (\w+) = (\d+)", decl)
            if d:
                fields[d.group(2)] = (d.group(1), int(d.group(3)))
        out[m.group(1)] = fields
    return out


@pytest.mark.skipif(not API_PAGE.exists(), reason="API page (../shared/docs) not present")
def test_proto_matches_the_api_page():
    page = _page_messages()
    assert len(page) >= 20
    scalar = {"string": 9, "bool": 8, "int64": 3, "int32": 5}
    for name, fields in page.items():
        desc = api_pb2.DESCRIPTOR.message_types_by_name[name]
        assert set(desc.fields_by_name) == set(fields), name
        for fname, (ftype, number) in fields.items():
            f = desc.fields_by_name[fname]
            assert f.number == number, f"{name}.{fname}"
            base = ftype.removeprefix("repeated ")
            if base.startswith("map<"):
                assert f.message_type.GetOptions().map_entry, f"{name}.{fname}"
                continue
            repeated = f.is_repeated
            assert repeated == ftype.startswith("repeated "), f"{name}.{fname}"
            if base in scalar:
                assert f.type == scalar[base], f"{name}.{fname}"
            else:
                assert f.message_type.name == base, f"{name}.{fname}"


def test_services_and_rpc_paths():
    svc = api_pb2.DESCRIPTOR.services_by_name
    assert api_pb2.DESCRIPTOR.package == "v1beta1"
    assert [m.name for m in svc["Registration"].methods] == ["Register"]
    dp = {m.name: m for m in svc["DevicePlugin"].methods}
    assert set(dp) == {
        "GetDevicePluginOptions",
        "ListAndWatch",
        "GetPreferredAllocation",
        "Allocate",
        "PreStartContainer",
    }
    mp = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(mp)
    streaming = {m.name: m.server_streaming for s in mp.service for m in s.method}
    assert streaming["ListAndWatch"] and not streaming["Allocate"]
    assert dp["Allocate"].input_type.name == "AllocateRequest"
