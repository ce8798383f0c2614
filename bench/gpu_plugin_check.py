#!/usr/bin/env python3
"""GPU proof for the device plugin and the agent's MPS manager, on a machine with a real GPU.

Runs, each step timed and guarded by timeouts, the whole in under 2 minutes:
  1. NVML discovery through the real driver (UUID, SMs, memory, NUMA node), probe, XID set;
  2. the GPU plugin (real NVML backend) against the kubelet emulator on a temporary
     kubelet.sock: registration, the full device list, GetPreferredAllocation + Allocate
     for 25 units and for a whole GPU; then a NodeAgent (no plugins of its own) samples NVML
     telemetry and reads the partition table those Allocate answers left;
  3. the agent's MpsDaemon: start nvidia-cuda-mps-control -d on a private pipe directory,
     health check, then (4) and stop;
  4. with torch present: a child process started with the env and mounts of the Allocate
     answers (container paths mapped to host paths, NVIDIA_VISIBLE_DEVICES as
     CUDA_VISIBLE_DEVICES), reporting the SMs it sees and a matmul's TFLOP/s; the shim is
     preloaded only where it exists (`--shim PATH`), else LD_PRELOAD is dropped and said so.
Prints one JSON document and writes it to --out (default $OUT/gpu_plugin_check.json when
$OUT is set, else bench/results/gpu_plugin_check.json).

Needs python3 with grpcio>=1.85.1, protobuf>=7.35 and nvidia-ml-py (pynvml).  Where they are
missing or too old, wheels in the repo's ignored `.whl/` folder are installed into a
temporary folder and the script re-runs itself with them; nvidia-ml-py is pure Python, grpcio
and protobuf are binary wheels for the GPU machine's Python.  Fetch them here with
    python3 bench/gpu_plugin_check.py --fetch-wheels 3.12
and carry `.whl` with the device call.  Then, there:
    python3 bench/gpu_plugin_check.py [--shim native/vai_accelerator/build/libvai_accelerator.so]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ("grpcio==1.85.3", "protobuf==7.36.2", "nvidia-ml-py==13.615.71")
BOOT_ENV = "KETI_GPU_CHECK_BOOTSTRAPPED"
SITE_ENV = "KETI_GPU_CHECK_SITE"  # the temporary folder the wheels went to; removed at the end


def fetch_wheels(pyver: str) -> int:
    """Download the wheels for CPython `pyver` (e.g. 3.12) on x86_64 Linux into ROOT/.whl."""
    abi = "cp" + pyver.replace(".", "")
    cmd = [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", pyver,
        "--implementation", "cp", "--abi", abi, "--platform", "manylinux2014_x86_64",
        "--platform", "manylinux_2_17_x86_64", "-d", str(ROOT / ".whl"), *WHEELS,
    ]  # fmt: skip
    return subprocess.call(cmd)


def _imports_ok() -> str | None:
    """None when the generated gRPC code and pynvml import, else why not."""
    try:
        sys.path.insert(0, str(ROOT))
        import pynvml  # noqa: F401

        from keti_ray.deviceplugin._gen import api_pb2_grpc  # noqa: F401

        return None
    except Exception as e:  # ImportError, or the gencode's runtime-version check
        return f"{type(e).__name__}: {e}"


def bootstrap(wheelhouse: Path) -> dict:
    """Make the imports work, from carried wheels if needed (re-executing this script)."""
    why = _imports_ok()
    if why is None:
        return {"wheels_installed": os.environ.get(BOOT_ENV) == "1"}
    if os.environ.get(BOOT_ENV) == "1" or not any(wheelhouse.glob("*.whl")):
        hint = "python3 bench/gpu_plugin_check.py --fetch-wheels 3.12, then carry .whl"
        err = {"ok": False, "error": f"imports failed: {why}", "wheelhouse": str(wheelhouse)}
        print(json.dumps({**err, "hint": hint}))
        sys.exit(3)
    target = Path(tempfile.mkdtemp(prefix="kr-gpu-site-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         "--target", str(target), *map(str, sorted(wheelhouse.glob("*.whl")))],
        check=True, timeout=120,
    )  # fmt: skip
    env = {**os.environ, BOOT_ENV: "1", SITE_ENV: str(target)}
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT), env.get("PYTHONPATH", "")])
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
    raise AssertionError("unreachable")


class Report:
    """Collects step results; always printable, also after a timeout."""

    def __init__(self) -> None:
        self.data: dict = {"ok": False, "steps": {}, "started": time.time()}

    def step(self, name: str, fn):
        t0 = time.monotonic()
        try:
            out = fn()
            self.data["steps"][name] = {"ok": True, "seconds": round(time.monotonic() - t0, 3),
                                        **(out or {})}  # fmt: skip
            return out
        except Exception as e:
            self.data["steps"][name] = {
                "ok": False,
                "seconds": round(time.monotonic() - t0, 3),
                "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc(limit=4),
            }
            return None


CHILD = r"""
import json, time, torch
p = torch.cuda.get_device_properties(0)
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
torch.cuda.synchronize(); a @ b; torch.cuda.synchronize()
t0 = time.perf_counter(); k = 0
while time.perf_counter() - t0 < 1.5:
    a @ b; k += 1
torch.cuda.synchronize(); dt = time.perf_counter() - t0
print(json.dumps({"sms_seen": p.multi_processor_count, "name": p.name,
                  "tflops": round(2 * n**3 * k / dt / 1e12, 1), "iters": k}))
"""


def child_env(resp, shim: str | None) -> tuple[dict, dict]:
    """The environment a container would get from this Allocate answer, on the host."""
    from keti_ray.constants import ENV_LD_PRELOAD, ENV_NVIDIA_VISIBLE_DEVICES

    mounts = {m.container_path: m.host_path for m in resp.mounts}
    env = dict(os.environ)
    notes = {}
    for k, v in resp.envs.items():
        for cpath, hpath in mounts.items():
            if v == cpath or v.startswith(cpath + "/"):
                v = hpath + v[len(cpath) :]
        env[k] = v
    if shim:
        env[ENV_LD_PRELOAD] = shim
        notes["shim"] = shim
    elif not os.path.exists(env.get(ENV_LD_PRELOAD, "")):
        notes["shim"] = f"absent at {env.get(ENV_LD_PRELOAD)}; LD_PRELOAD dropped (pass --shim)"
        env.pop(ENV_LD_PRELOAD, None)
    env["CUDA_VISIBLE_DEVICES"] = env.pop(ENV_NVIDIA_VISIBLE_DEVICES)  # what the runtime does
    keep = ("LD_PRELOAD", "BLESS_LIMIT_PCT", "VAI_MEMORY_LIMIT", "CUDA_VISIBLE_DEVICES",
            "CUDA_MPS_PIPE_DIRECTORY", "VAI_STATUS_DIR")  # fmt: skip
    notes["env"] = {k: env[k] for k in keep if k in env}
    return env, notes


def run_child(env: dict, timeout: float = 45) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description="GPU proof for the device plugin and MPS manager")
    ap.add_argument("--fetch-wheels", metavar="PYVER", help="download wheels into .whl and exit")
    ap.add_argument("--wheelhouse", type=Path, default=ROOT / ".whl")
    ap.add_argument("--shim", help="host path of libvai_accelerator.so to preload in the child")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--deadline", type=float, default=110.0, help="overall limit, seconds")
    ap.add_argument("--no-child", action="store_true", help="skip the torch child processes")
    args = ap.parse_args()
    if args.fetch_wheels:
        sys.exit(fetch_wheels(args.fetch_wheels))
    boot = bootstrap(args.wheelhouse)

    import grpc
    import pynvml
    from google.protobuf import __version__ as pb_version

    sys.path.insert(0, str(ROOT / "tests" / "deviceplugin"))
    from kubelet_emulator import KubeletEmulator

    from keti_ray.agent.mps import MpsDaemon
    from keti_ray.constants import GPU_RESOURCE
    from keti_ray.deviceplugin.gpu import GpuPlugin
    from keti_ray.deviceplugin.nvml import NvmlBackend

    rep = Report()
    rep.data["env"] = {
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "protobuf": pb_version,
        "nvidia_ml_py": getattr(pynvml, "__version__", "?"),
        **boot,
    }
    out = args.out or (
        Path(os.environ["OUT"]) / "gpu_plugin_check.json"
        if os.environ.get("OUT")
        else ROOT / "bench" / "results" / "gpu_plugin_check.json"
    )

    def on_alarm(signum, frame):
        raise TimeoutError(f"overall deadline of {args.deadline}s reached")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.deadline))
    tmp = Path(tempfile.mkdtemp(prefix="kgc", dir="/tmp"))
    st: dict = {}
    try:

        def nvml_step():
            st["backend"] = b = NvmlBackend()
            gpus = b.discover()
            if not gpus:
                raise RuntimeError("NVML found no GPU")
            b.wait_xid(0.2)  # registers the XID event set; a timeout is the normal answer
            return {
                "driver": pynvml.nvmlSystemGetDriverVersion(),
                "gpus": [g.__dict__ for g in gpus],
                "probe": {g.uuid: b.probe(g.uuid) for g in gpus},
            }

        rep.step("nvml_discovery", nvml_step)
        if "backend" not in st:
            raise RuntimeError("no NVML; later steps skipped")

        def plugin_step():
            st["kubelet"] = k = KubeletEmulator(tmp / "dp").start()
            t0 = time.monotonic()
            st["plugin"] = p = GpuPlugin(
                st["backend"], tmp / "dp", status_host_dir=str(tmp / "status"),
                limits_host_dir=str(tmp / "limits"), mps_pipe_dir=str(tmp / "mps-pipe"),
                probe_interval_s=1.0,
            )  # fmt: skip
            p.start()
            n = len(p.gpus)
            if not k.wait_for(lambda k: k.capacity(GPU_RESOURCE) == 100 * n, 15):
                raise RuntimeError(f"kubelet saw {k.capacity(GPU_RESOURCE)} units, want {100 * n}")
            registered_s = time.monotonic() - t0
            devs = k.devices(GPU_RESOURCE)
            one = next(iter(devs.values()))
            # whole GPU first (its child runs before release: the status dir lives as long as
            # the allocation), then the 25-unit share, kept until the agent has read it
            st["ids100"], st["r100"] = k.admit(GPU_RESOURCE, 100)
            r100 = st["r100"]
            return {
                "registered_after_s": round(registered_s, 3),
                "units": len(devs),
                "sample_device": {"ID": one.ID, "health": one.health,
                                  "numa": [x.ID for x in one.topology.nodes]},
                "chooser": p.chooser_name,
                "allocate_100": {"envs": dict(r100.envs)},
            }  # fmt: skip

        rep.step("plugin_with_kubelet_emulator", plugin_step)

        def agent_sample(plugin_subdir: str) -> tuple[list[dict], list[dict], int]:
            """One sample from a NodeAgent deployed as beside the plugin DaemonSet (no plugins
            of its own, reading the plugin's status dir): records, partition table, and how
            many batches its sampler had taken."""
            from keti_ray.agent.node_agent import AgentConfig, NodeAgent
            from keti_ray.agent.telemetry import ListSink

            cfg = AgentConfig(
                plugin_dir=str(tmp / plugin_subdir), serve_plugins=False, mps=False,
                status_host_dir=str(tmp / "status"), limits_host_dir=str(tmp / "limits"),
                telemetry_interval_s=0.2,
            )  # fmt: skip
            agent = NodeAgent(cfg, ListSink())
            try:
                time.sleep(0.5)
                return agent.sample_now(), agent.partition_table(), agent.sampler.samples
            finally:
                agent.stop()

        def agent_step():
            batch, table, batches = agent_sample("agent-dp")
            return {
                "gpu_samples": [r for r in batch if r["kind"] == "gpu"],
                "process_samples": len([r for r in batch if r["kind"] == "process"]),
                "partition_table": table,
                "sampler_batches": batches,
            }

        rep.step("agent_telemetry_and_partition", agent_step)

        mps = MpsDaemon(tmp / "mps-pipe", tmp / "mps-log", timeout_s=15)
        st["mps"] = mps

        def mps_start():
            if not mps.available():
                raise RuntimeError("nvidia-cuda-mps-control not on PATH")
            mps.start()
            return {"healthy": mps.healthy(), "pids": mps.pids(),
                    "server_list": mps.control("get_server_list").stdout.strip()}  # fmt: skip

        rep.step("mps_start", mps_start)
        mps_up = rep.data["steps"]["mps_start"]["ok"]

        def child(resp):
            env, notes = child_env(resp, args.shim)
            if not mps_up:
                notes["warning"] = "MPS not running: the child ran without MPS"
            try:
                return {**notes, **run_child(env)}
            except Exception as e:
                raise RuntimeError(f"{e} (child env: {json.dumps(notes)})") from e

        if not args.no_child and "r100" in st:
            rep.step("child_whole_gpu_100", lambda: child(st["r100"]))
        if "ids100" in st:
            st["kubelet"].release(GPU_RESOURCE, st.pop("ids100"))

        def admit_25():
            st["ids25"], st["r25"] = st["kubelet"].admit(GPU_RESOURCE, 25)
            r25 = st["r25"]
            mounts = [(m.container_path, m.host_path, m.read_only) for m in r25.mounts]
            return {"envs": dict(r25.envs), "mounts": mounts}

        rep.step("allocate_25", admit_25)
        if not args.no_child and "r25" in st:
            rep.step("child_share_25", lambda: child(st["r25"]))
            rep.data["steps"]["child_share_25"]["mps_server_list_after"] = (
                mps.control("get_server_list").stdout.strip() if mps_up else None
            )

            def agent_after_child():
                # issue 7: the agent's telemetry (SM share granted by the plugin) beside what
                # the shim itself wrote in its status line for the same pod
                from keti_ray.agent.telemetry import to_store_samples

                batch, table, _ = agent_sample("agent2-dp")
                return {
                    "shim_status": [r for r in batch if r["kind"] == "shim"],
                    "store_samples": to_store_samples(batch),
                    "partition_table": table,
                }

            rep.step("agent_after_child", agent_after_child)
            st["kubelet"].release(GPU_RESOURCE, st.pop("ids25"))

        def mps_stop():
            pids = mps.pids()
            mps.stop()
            left = mps.pids()
            if left:
                raise RuntimeError(f"MPS daemon still running: {left}")
            return {"stopped_pids": pids, "healthy_after": mps.healthy()}

        if mps_up:
            rep.step("mps_stop", mps_stop)
    except TimeoutError as e:
        rep.data["timed_out"] = str(e)
    except Exception as e:  # a step that the rest depends on failed: report what ran
        rep.data["aborted"] = f"{type(e).__name__}: {e}"
    finally:
        signal.alarm(0)
        for key in ("plugin", "kubelet"):
            try:
                if key in st:
                    st[key].stop()
            except Exception:
                pass
        try:
            if "mps" in st and st["mps"].pids():
                st["mps"].stop()
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
        if os.environ.get(SITE_ENV, "").startswith(tempfile.gettempdir()):
            shutil.rmtree(os.environ[SITE_ENV], ignore_errors=True)
    needed = ("nvml_discovery", "plugin_with_kubelet_emulator", "mps_start", "mps_stop")
    rep.data["ok"] = all(rep.data["steps"].get(n, {}).get("ok") for n in needed)
    rep.data["seconds"] = round(time.time() - rep.data.pop("started"), 2)
    text = json.dumps(rep.data, indent=2, default=str)
    print(text)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    except OSError as e:
        print(f"could not write {out}: {e}", file=sys.stderr)
    sys.exit(0 if rep.data["ok"] else 1)


if __name__ == "__main__":
    main()
