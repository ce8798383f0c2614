"""End to end on Kubernetes, emulated where it cannot run here: the API-server emulator, one
kubelet emulator and one real GPU plugin (simulated NVML) per node, and the allocator as it
ships (serve.app on a real Ray with Serve, the SQLite booking store, the cluster sync), reached
by a kube-scheduler stand-in over mutual TLS through the TLS gate.

4 GPU nodes of 8 GPUs; 60 pods of mixed shares, whole GPUs and two-container pods; the
allocator killed and restarted mid-stream; deletions (shares back in /partition within 2 s);
a watch expiry (410) behind which pods are deleted; a node removed; the allocator unreachable
(the plugin's fallback counted). Every API call of the allocator and of the node agents runs
under kuberay/10-rbac.yaml's rules (the emulator enforces them) and is recorded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from keti_ray.constants import (
    ENV_BLESS_LIMIT_PCT,
    ENV_K8S_API,
    ENV_K8S_TOKEN,
    ENV_NVIDIA_VISIBLE_DEVICES,
    ENV_TOKEN,
    GPU_RESOURCE,
)
from keti_ray.shares import limit_pct

from .apiserver_emulator import ApiServerEmulator
from .k8s_certs import TestCA
from .k8s_cluster import SchedulerStandIn, cluster_role_rules, core_api, gpu_node_body, gpu_pod_body
from .k8s_gate import RunningGate

sys.path.insert(0, str(Path(__file__).parents[1] / "deviceplugin"))
from kubelet_emulator import KubeletEmulator  # noqa: E402

NODE_SIDE = importlib.util.find_spec("keti_ray.deviceplugin.decisions") is not None
NODES = [f"gpu-node-{i}" for i in range(4)]
GPUS_PER_NODE = 8
PEOPLE_TOKEN = "people-token"
ALLOCATOR_TOKEN = "allocator-sa-token"
AGENT_TOKEN = "node-agent-sa-token"
R = GPU_RESOURCE


def wait(pred, timeout: float, what: str, step: float = 0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def workload(rng: random.Random, n: int) -> list[tuple[str, list[int]]]:
    """n pods: shares of one GPU, whole GPUs, and some two-container pods."""
    shapes = [[10], [20], [25], [30], [40], [50], [60], [70], [100], [200], [30, 100], [20, 40]]
    weights = [6, 6, 5, 6, 5, 5, 3, 3, 4, 2, 1, 1]
    return [(f"pod-{i:02d}", rng.choices(shapes, weights)[0]) for i in range(n)]


class Node:
    """One emulated GPU node: kubelet (device manager + PodResources) and the real GPU plugin,
    which reads decisions through the API server with the node agent's token."""

    def __init__(self, name: str, url: str, root: Path) -> None:
        from keti_ray.deviceplugin.gpu import GpuPlugin
        from keti_ray.deviceplugin.nvml import SimulatedBackend

        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="ke2e", dir="/tmp"))
        self.backend = SimulatedBackend(GPUS_PER_NODE, seed=name)
        self.uuids = [g.uuid for g in self.backend.discover()]
        kw: dict = {
            "status_host_dir": str(root / name / "status"),
            "mps_pipe_dir": str(root / name / "mps"),
            "shim_host_path": str(root / name / "libvai_accelerator.so"),
            "probe_interval_s": 0.5,
        }
        self.closers = []
        if NODE_SIDE:
            from keti_ray.deviceplugin.decisions import ApiServerPods, DecisionFinder
            from keti_ray.deviceplugin.podresources import PodResourcesClient

            self.kubelet = KubeletEmulator(self.dir, pod_resources_dir=self.dir / "pr").start()
            pods = ApiServerPods.from_environment(name, host=url, token=AGENT_TOKEN)
            pr = PodResourcesClient(self.dir / "pr" / "kubelet.sock")
            self.closers += [pods.close, pr.close]
            kw.update(
                limits_host_dir=str(root / name / "limits"),
                pod_resources=pr,
                decisions=DecisionFinder(name, pods.pods, lambda: set()),
            )
        else:
            self.kubelet = KubeletEmulator(self.dir).start()
        self.plugin = GpuPlugin(self.backend, self.dir, **kw)
        if NODE_SIDE:
            self.plugin.decisions.held = self.plugin._held_containers
        self.plugin.start()
        assert self.kubelet.wait_for(lambda k: k.capacity(R) == 100 * GPUS_PER_NODE, 10)
        self.admitted: dict[tuple[str, str], dict[str, dict]] = {}  # pod -> container -> env

    def admit(self, pod: dict) -> None:
        """Kubelet admitting a pod bound here: Allocate per GPU container, in order."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        envs = {}
        for c in pod["spec"]["containers"]:
            units = int(c["resources"]["limits"].get(R, 0))
            if not units:
                continue
            if NODE_SIDE:
                ids, resp = self.kubelet.admit(R, units, pod=key, container=c["name"])
            else:
                ids, resp = self.kubelet.admit(R, units)
            envs[c["name"]] = {"env": dict(resp.envs), "ids": ids}
        self.admitted[key] = envs

    def forget(self, key: tuple[str, str]) -> None:
        envs = self.admitted.pop(key, {})
        if NODE_SIDE:
            self.kubelet.remove_pod(*key)
        else:
            for e in envs.values():
                self.kubelet.release(R, e["ids"])

    def fallbacks(self) -> int:
        """Containers the plugin placed by its own choice: its Allocate fallbacks (it counts
        GetPreferredAllocation's separately; kubelet calls both for one container)."""
        return sum(n for (call, _), n in self.plugin.fallbacks.items() if call == "Allocate")

    def stop(self) -> None:
        self.plugin.stop()
        for close in self.closers:
            close()
        self.kubelet.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Kubelets:
    """The kubelets' side of the pod lifecycle: admit pods bound to their node (then report
    Running through pods/status, as kubelet does), free the devices of pods that are gone."""

    def __init__(self, admin, nodes: dict[str, Node]) -> None:
        self.admin, self.nodes = admin, nodes

    def sync(self) -> None:
        """Devices of pods that are gone are freed first (kubelet's device manager drops
        inactive pods before it allocates), then the new pods are admitted."""
        pods = json.loads(self.admin.list_pod_for_all_namespaces(_preload_content=False).data)
        here = {
            (p["spec"].get("nodeName") or "", p["metadata"]["namespace"], p["metadata"]["name"])
            for p in pods["items"]
        }
        for node in self.nodes.values():
            for key in list(node.admitted):
                if (node.name, *key) not in here:
                    node.forget(key)
        for p in pods["items"]:
            key = (p["metadata"]["namespace"], p["metadata"]["name"])
            node = self.nodes.get(p["spec"].get("nodeName") or "")
            if node is None or key in node.admitted or p["status"]["phase"] != "Pending":
                continue
            node.admit(p)
            self.admin.patch_namespaced_pod_status(key[1], key[0], {"status": {"phase": "Running"}})


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    marks = {"start": time.monotonic()}
    emu = ApiServerEmulator(bookmark_interval_s=0.5, kubelet_grace_s=0.05).start()
    emu.authorize(ALLOCATOR_TOKEN, cluster_role_rules("keti-allocator"))
    emu.authorize(AGENT_TOKEN, cluster_role_rules("keti-node-agent"))
    admin = core_api(emu.url)
    with ThreadPoolExecutor(len(NODES)) as pool:  # the plugins start (and register) together
        nodes = dict(zip(NODES, pool.map(lambda n: Node(n, emu.url, root), NODES), strict=True))
    for name, node in nodes.items():
        body = gpu_node_body(name, node.uuids)
        if NODE_SIDE:  # kubelet registers the Node; the node agent publishes its GPUs on it
            from keti_ray.agent.publish import publish
            from keti_ray.deviceplugin.decisions import api_client

            ann = body["metadata"].pop("annotations")
            body["metadata"]["labels"].pop("keti.re.kr/gpu-model")
            admin.create_node(body)
            publish(api_client(emu.url, AGENT_TOKEN), name, node.backend.discover())
            got = admin.read_node(name).metadata.annotations
            assert got["keti.re.kr/gpu-uuids"] == ann["keti.re.kr/gpu-uuids"]
        else:
            admin.create_node(body)
    marks["nodes_up"] = time.monotonic()
    env = {
        ENV_K8S_API: emu.url,
        ENV_K8S_TOKEN: ALLOCATOR_TOKEN,
        ENV_TOKEN: PEOPLE_TOKEN,
        "KETI_STATE": str(root / "bookings.sqlite"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    pki = {"dir": root / "pki"}
    pki["dir"].mkdir()
    server_ca = TestCA(pki["dir"], "allocator-ca")
    client_ca = TestCA(pki["dir"], "scheduler-client-ca")
    server = server_ca.issue("keti-allocator-scheduler", dns=("localhost",))
    sched_cert = client_ca.issue("keti-scheduler", client=True)
    from ..factories import local_serve

    try:
        with local_serve() as port:
            import ray
            from ray import serve

            from serve.app import build_app
            from serve.state import RAY_NAMESPACE, STATE_ACTOR_NAME

            marks["ray_up"] = time.monotonic()
            serve.run(build_app(), name="keti-allocator", route_prefix="/")
            people = httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {PEOPLE_TOKEN}"},
                timeout=30,
            )
            wait(lambda: people.get("/k8s/status").status_code == 200, 60, "the allocator")
            marks["allocator_up"] = time.monotonic()
            gate = RunningGate(
                f"http://127.0.0.1:{port}", PEOPLE_TOKEN, server.cert, server.key,
                client_ca.files.cert,
            )  # fmt: skip
            gate.__enter__()
            ctx = ssl.create_default_context(cafile=str(server_ca.files.cert))
            ctx.load_cert_chain(str(sched_cert.cert), str(sched_cert.key))
            scheduler = SchedulerStandIn(
                admin, httpx.Client(verify=ctx, timeout=10), f"{gate.url}/scheduler"
            )
            yield {
                "emu": emu,
                "admin": admin,
                "nodes": nodes,
                "kubelets": Kubelets(admin, nodes),
                "people": people,
                "scheduler": scheduler,
                "gate": gate,
                "state": lambda: ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE),
                "setup": {
                    "nodes_s": marks["nodes_up"] - marks["start"],
                    "ray_s": marks["ray_up"] - marks["nodes_up"],
                    "serve_s": marks["allocator_up"] - marks["ray_up"],
                },
            }
            gate.__exit__()
            serve.delete("keti-allocator")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for node in nodes.values():
            node.stop()
        emu.stop()


def bookings(e) -> dict[str, dict]:
    r = e["people"].get("/bookings")
    assert r.status_code == 200, r.text
    return {b["pod"]: b for b in r.json()}


def pod_of(key: str) -> str:
    """The pod key of a booking key (`ns/name` or `ns/name/container`)."""
    return "/".join(key.split("/")[:2])


def partition_pods(e) -> set[str]:
    part = e["people"].get("/partition").json()["nodes"]
    return {p["pod"] for n in part.values() for g in n["gpus"] for p in g["partitions"]}


def schedule_all(e, timeout: float) -> None:
    sched, kubelets = e["scheduler"], e["kubelets"]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sched.run(timeout_s=2)
        kubelets.sync()
        if not sched.pending():
            return
    raise AssertionError(f"pods still pending: {[p['metadata']['name'] for p in sched.pending()]}")


def check_bookings_match_the_pods(e) -> int:
    """Every running GPU container holds exactly its booking: the GPU(s) and the share named
    in its env are those booked; no GPU is booked over 1000 milli; no booking without a pod."""
    booked = bookings(e)
    per_gpu: dict[str, int] = {}
    for b in booked.values():
        for g in b["gpus"]:
            per_gpu[g["uuid"]] = per_gpu.get(g["uuid"], 0) + g["milli"]
    assert max(per_gpu.values()) <= 1000, "a GPU is booked over its capacity"
    seen = set()
    for node in e["nodes"].values():
        for (ns, name), containers in node.admitted.items():
            for cname, got in containers.items():
                key = f"{ns}/{name}" if len(containers) == 1 else f"{ns}/{name}/{cname}"
                b = booked.get(key)
                assert b is not None, f"{key} runs on {node.name} without a booking"
                assert b["node"] == node.name
                uuids = [g["uuid"] for g in b["gpus"]]
                assert got["env"][ENV_NVIDIA_VISIBLE_DEVICES] == ",".join(uuids), key
                pct = limit_pct(b["gpus"][0]["milli"])
                assert got["env"].get(ENV_BLESS_LIMIT_PCT) == (str(pct) if pct else None), key
                seen.add(key)
    live = {k for k in booked if "/pod-" in k or "/late-" in k}
    assert live == seen, f"bookings without a running pod: {sorted(live - seen)}"
    return len(seen)


@pytest.mark.skipif(not NODE_SIDE, reason="needs the GPU plugin that honours the decision "
                    "annotation (keti_ray.deviceplugin.decisions, branch wt-node)")  # fmt: skip
def test_kubernetes_end_to_end(e2e):
    e = e2e
    admin, emu, people = e["admin"], e["emu"], e["people"]
    figures: dict[str, object] = {"setup": {k: round(v, 1) for k, v in e["setup"].items()}}
    t0 = time.monotonic()
    pods = workload(random.Random(7), 60)
    status = people.get("/k8s/status").json()
    assert {n: v["gpus"] for n, v in status["nodes"].items()} == dict.fromkeys(NODES, 8)

    # --- 60 pods; the allocator killed and restarted after the first 20 are bound ---------
    for name, units in pods[:20]:
        admin.create_namespaced_pod("default", gpu_pod_body(name, units))
    schedule_all(e, 30)
    import ray

    restart_t = time.monotonic()
    ray.kill(e["state"](), no_restart=False)
    # meanwhile: two bound pods deleted, the other 40 created
    gone = [pods[0][0], pods[1][0]]
    for name in gone:
        admin.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    for name, units in pods[20:]:
        admin.create_namespaced_pod("default", gpu_pod_body(name, units))
    schedule_all(e, 60)
    figures["restart_to_all_bound_s"] = time.monotonic() - restart_t
    wait(lambda: not ({f"default/{g}" for g in gone} & set(bookings(e))), 10, "reconcile")
    e["kubelets"].sync()
    running = check_bookings_match_the_pods(e)
    assert running == sum(len(units) for name, units in pods if name not in gone)
    assert sum(n.fallbacks() for n in e["nodes"].values()) == 0, "every GPU came from a decision"
    binds = [c for c in e["scheduler"].calls if c[0] == "bind"]
    figures["binds"], figures["bind_http_errors"] = len(binds), sum(1 for c in binds if c[1] != 200)
    filters = [c for c in e["scheduler"].calls if c[0] == "filter"]
    figures["filters"] = len(filters)
    figures["filter_errors"] = sum(1 for c in filters if c[1] != 200)  # the restart window
    figures["containers_running"] = running

    # --- deletions: shares back in /partition within 2 s -----------------------------------
    delays = []
    for name, _ in pods[2:12]:
        key = f"default/{name}"
        start = time.monotonic()
        admin.delete_namespaced_pod(name, "default")
        wait(lambda key=key: not any(p.startswith(key) for p in partition_pods(e)), 2.0, key)
        delays.append(time.monotonic() - start)
    figures["release_s_max"] = max(delays)
    figures["release_s_median"] = statistics.median(delays)
    e["kubelets"].sync()
    check_bookings_match_the_pods(e)

    # --- a watch expiry (410) with deletions behind it: relisted, nothing lost -------------
    before = people.get("/k8s/status").json()["watch"]["pods"]["relists_410"]
    emu.hold_watches()
    behind = [name for name, _ in pods[12:15]]
    for name in behind:
        admin.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    emu.compact()
    emu.release_watches()
    wait(lambda: not ({f"default/{n}" for n in behind} & {pod_of(k) for k in bookings(e)}), 10,
         "the relist to release the pods deleted behind the expired watch")  # fmt: skip
    after = people.get("/k8s/status").json()["watch"]["pods"]["relists_410"]
    assert after > before
    e["kubelets"].sync()
    check_bookings_match_the_pods(e)

    # --- a node removed: its bookings are set aside and reported ---------------------------
    on = {n: sorted(k for k, b in bookings(e).items() if b["node"] == n) for n in NODES}
    victim = max(NODES, key=lambda n: len(on[n]))
    lost = on[victim]
    figures["bookings_per_node"] = {n: len(v) for n, v in on.items()}
    assert lost
    admin.delete_node(victim)
    health = wait(
        lambda: (h := people.get("/health").json())["set_aside"]["count"] == len(lost) and h,
        10, "the set-aside report",
    )  # fmt: skip
    shown = health["set_aside"]["bookings"]  # /health shows the first 20
    assert {s["pod"] for s in shown} <= set(lost) and len(shown) == min(20, len(lost))
    assert all(victim in s["reason"] for s in health["set_aside"]["bookings"])
    report = people.get("/k8s/status").json()["last_nodes_report"]
    assert sorted(s["pod"] for s in report["set_aside"]) == lost
    assert victim not in people.get("/partition").json()["nodes"]
    e["nodes"].pop(victim).stop()  # its kubelet and plugin go with it

    # --- the allocator unreachable: pods still run, on the plugin's counted fallback -------
    e["gate"].__exit__()
    fallbacks = sum(n.fallbacks() for n in e["nodes"].values())
    for i in range(2):
        admin.create_namespaced_pod("default", gpu_pod_body(f"late-{i}", 20))
    e["scheduler"].run(timeout_s=10)
    e["kubelets"].sync()
    assert e["scheduler"].default_binds == 2
    assert sum(n.fallbacks() for n in e["nodes"].values()) - fallbacks == 2
    e["gate"].__enter__()

    # --- every API call under RBAC, and every granted verb used -----------------------------
    for token, role in ((ALLOCATOR_TOKEN, "keti-allocator"), (AGENT_TOKEN, "keti-node-agent")):
        used = {
            (c.resource + (f"/{c.subresource}" if c.subresource else ""), c.verb)
            for c in emu.calls_by(token)
        }
        granted = {
            (r, v)
            for rule in cluster_role_rules(role)
            for r in rule["resources"]
            for v in rule["verbs"]
        }
        assert used == granted, f"{role}: used {sorted(used)}, granted {sorted(granted)}"
    figures["total_s"] = time.monotonic() - t0
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    print("\nk8s e2e figures:", json.dumps(rounded))
