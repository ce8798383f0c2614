"""openb loader: both pod layouts, node lists, and errors that name file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from keti_ray.trace import TraceError, load_nodes, load_pods

POD_HEADER_11 = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
    "deletion_time,scheduled_time\n"
)
POD_HEADER_5 = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_both_pod_layouts(tmp_path):
    eleven = write(
        tmp_path,
        "p11.csv",
        POD_HEADER_11
        + "a,8000,1024,1,470,V100M16|V100M32,LS,Running,0,10,0\n"
        + "b,4000,512,0,0,,BE,Running,0,10,0\n",
    )
    five = write(tmp_path, "p5.csv", POD_HEADER_5 + "c,1000,64,8,1000\n")
    pods = load_pods(eleven)
    assert [p.name for p in pods] == ["a", "b"]
    assert pods[0].gpu_spec == frozenset({"V100M16", "V100M32"})
    assert pods[0].is_shared and pods[0].gpu_request_milli == 470
    assert pods[1].gpu_spec == frozenset() and pods[1].num_gpu == 0
    (c,) = load_pods(five)
    assert c.num_gpu == 8 and c.gpu_request_milli == 8000 and c.gpu_spec == frozenset()


def test_loads_nodes(tmp_path):
    path = write(tmp_path, "n.csv", NODE_HEADER + "n0,64000,262144,2,P100\nn1,32000,1024,0,\n")
    nodes = load_nodes(path)
    assert [(n.name, n.num_gpus, n.model) for n in nodes] == [("n0", 2, "P100"), ("n1", 0, "")]


@pytest.mark.parametrize(
    ("row", "line", "field"),
    [
        ("x,abc,1,0,0", 3, "cpu_milli"),
        ("x,1,-5,0,0", 3, "memory_mib"),
        ("x,1,1,2,500", 3, "gpu_milli"),
        ("x,1,1,1,1500", 3, "gpu_milli"),
        ("x,1,1,1.5,0", 3, "num_gpu"),
        ("x,1,1,9,1000", 3, "num_gpu"),
    ],
)
def test_bad_pod_rows_name_file_line_and_field(tmp_path, row, line, field):
    path = write(tmp_path, "bad.csv", POD_HEADER_5 + "ok,1,1,0,0\n" + row + "\n")
    with pytest.raises(TraceError) as info:
        load_pods(path)
    message = str(info.value)
    assert str(path) in message and f"line {line}" in message and repr(field) in message


def test_malformed_row_and_missing_column(tmp_path):
    short = write(tmp_path, "short.csv", POD_HEADER_5 + "a,1,1,0\n")
    with pytest.raises(TraceError, match=r"short.csv: line 2: malformed row: 4 fields"):
        load_pods(short)
    missing = write(tmp_path, "missing.csv", "name,cpu_milli,num_gpu,gpu_milli\na,1,0,0\n")
    with pytest.raises(TraceError, match=r"line 1: missing column\(s\) memory_mib"):
        load_pods(missing)
    node_missing = write(tmp_path, "nodes.csv", "sn,cpu_milli,gpu,model\nn,1,0,\n")
    with pytest.raises(TraceError, match="memory_mib"):
        load_nodes(node_missing)


def test_bad_node_rows(tmp_path):
    path = write(tmp_path, "n.csv", NODE_HEADER + "n0,64000,262144,2,\n")
    with pytest.raises(TraceError, match=r"line 2: field 'model'"):
        load_nodes(path)
    path = write(tmp_path, "n2.csv", NODE_HEADER + "n0,64000,262144,12,T4\n")
    with pytest.raises(TraceError, match=r"line 2: field 'gpu' must be 0-8"):
        load_nodes(path)


def test_duplicates_empty_and_absent_files(tmp_path):
    dup = write(tmp_path, "dup.csv", POD_HEADER_5 + "a,1,1,0,0\na,1,1,0,0\n")
    with pytest.raises(TraceError, match="line 3: field 'name': pod 'a' appears twice"):
        load_pods(dup)
    with pytest.raises(TraceError, match="empty file"):
        load_pods(write(tmp_path, "empty.csv", ""))
    with pytest.raises(TraceError, match="no pods"):
        load_pods(write(tmp_path, "header.csv", POD_HEADER_5))
    with pytest.raises(TraceError, match="cannot open"):
        load_pods(tmp_path / "absent.csv")


def test_every_openb_list_loads(openb_dir):
    nodes = load_nodes(openb_dir / "openb_node_list_gpu_node.csv")
    assert len(nodes) == 1213 and sum(n.num_gpus for n in nodes) == 6212
    assert len(load_nodes(openb_dir / "openb_node_list_all_node.csv")) == 1523
    for path in sorted(openb_dir.glob("openb_pod_list_*.csv")):
        pods = load_pods(path)
        assert len(pods) > 7000, path
