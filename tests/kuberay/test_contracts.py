"""The manifests use the names the code uses (keti_ray/constants.py), and the parts fit together.

One source of truth: if a manifest drifts from a constant (a resource name, an env var, a path),
a test here fails.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kuberay_validators import scheduler_config_errors

from keti_ray import constants as C
from keti_ray.manifests import MANIFEST_DIR, Manifest, find

ENV_CONSTANTS = {v for k, v in vars(C).items() if k.startswith("ENV_")}
# Env vars that are not keti-ray's own names, and who defines them.
EXTERNAL_ENV = {
    "NODE_NAME": "Downward API spec.nodeName, for the plugin and agent to name their node",
    "POD_IP": "Downward API status.podIP, Ray's --node-ip-address",
    "RAY_ADDRESS": "Ray: the GCS address `ray start` joins",
    "NVIDIA_DRIVER_CAPABILITIES": "NVIDIA container toolkit: which driver parts to mount",
}
# Env vars whose value is fixed by a constant.
ENV_VALUES = {
    C.ENV_MPS_PIPE_DIRECTORY: C.MPS_PIPE_DIR,
    C.ENV_MPS_LOG_DIRECTORY: C.MPS_LOG_DIR,
    C.ENV_VAI_STATUS_DIR: C.VAI_STATUS_HOST_DIR,
    C.ENV_API_PORT: str(C.DEFAULT_API_PORT),
    C.ENV_LD_PRELOAD: C.SHIM_CONTAINER_PATH,
}
KETI_RESOURCES = {C.GPU_RESOURCE, C.NPU_RESOURCE}
IMAGE = "keti-ray:0.1.0"


# --- walking pod specs -----------------------------------------------------------------------


def pod_specs(m: Manifest) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod template an object carries."""
    spec = m.doc.get("spec", {})
    if m.kind in ("DaemonSet", "Deployment"):
        yield m.where(), spec["template"]["spec"]
    elif m.kind == "Pod":
        yield m.where(), spec
    elif m.kind in ("RayCluster", "RayService", "RayJob"):
        cluster = (
            spec
            if m.kind == "RayCluster"
            else spec.get("rayClusterConfig" if m.kind == "RayService" else "rayClusterSpec")
        )
        if cluster:
            yield f"{m.where()} head", cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster.get("workerGroupSpecs", []):
                yield f"{m.where()} {group['groupName']}", group["template"]["spec"]
        if m.kind == "RayJob" and "submitterPodTemplate" in spec:
            yield f"{m.where()} submitter", spec["submitterPodTemplate"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec.get("containers", [])


def all_containers(manifests: list[Manifest]) -> Iterator[tuple[str, dict, dict]]:
    for m in manifests:
        for where, spec in pod_specs(m):
            for c in containers(spec):
                yield f"{where} {c['name']}", spec, c


def daemonset(manifests: list[Manifest], name: str) -> dict[str, Any]:
    return find(manifests, "DaemonSet", name).doc


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in containers(spec) if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in spec["volumes"] if v["name"] == name)


def mount_path(c: dict[str, Any], volume_name: str) -> str:
    return next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == volume_name)


# --- resource names --------------------------------------------------------------------------


def test_keti_resources_are_the_constants(manifests: list[Manifest]) -> None:
    seen = set()
    for where, _, c in all_containers(manifests):
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for key in res.get(part, {}):
                if "keti" in key or "/" in key:
                    assert key in KETI_RESOURCES, f"{where}: unknown extended resource {key!r}"
                    seen.add(key)
    assert seen == KETI_RESOURCES


@pytest.mark.parametrize("letter", "abcd")
def test_workloads_request_gpu_pct(manifests: list[Manifest], letter: str) -> None:
    pod = find(manifests, "Pod", f"workload-{letter}").doc
    (c,) = pod["spec"]["containers"]
    units = int(c["resources"]["limits"][C.GPU_RESOURCE])
    # design.md: 1-100 from one GPU, above 100 whole GPUs only.
    assert 1 <= units <= C.GPU_UNITS_PER_DEVICE or units % C.GPU_UNITS_PER_DEVICE == 0
    # Extended resources cannot be overcommitted: a request, if given, equals the limit.
    assert c["resources"].get("requests", {}).get(C.GPU_RESOURCE, str(units)) == str(units)
    assert c["command"] == [f"/opt/keti/workloads/workload-{letter}"]
    assert pod["spec"]["schedulerName"] == "keti-scheduler"
    # The plugin's Allocate sets these; a pod that set them would fight it.
    assert not set(env_of(c)) & {
        C.ENV_LD_PRELOAD,
        C.ENV_BLESS_LIMIT_PCT,
        C.ENV_NVIDIA_VISIBLE_DEVICES,
    }


def test_npu_test_requests_one_npu(manifests: list[Manifest]) -> None:
    (c,) = find(manifests, "Pod", "npu-test").doc["spec"]["containers"]
    assert c["resources"]["limits"] == {"memory": "128Mi", C.NPU_RESOURCE: "1"}


# --- env vars --------------------------------------------------------------------------------


def test_env_names_come_from_constants(manifests: list[Manifest]) -> None:
    for where, _, c in all_containers(manifests):
        for name, value in env_of(c).items():
            assert name in ENV_CONSTANTS | set(EXTERNAL_ENV), (
                f"{where}: env {name} is neither an ENV_* constant nor a known external name"
            )
            if name in ENV_VALUES:
                assert value == ENV_VALUES[name], f"{where}: {name}={value!r}"


# --- the plugin DaemonSets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "socket"),
    [
        ("keti-gpu-plugin", "gpu", C.GPU_PLUGIN_SOCKET),
        ("keti-npu-plugin", "npu", C.NPU_PLUGIN_SOCKET),
    ],
)
def test_plugin_daemonset(manifests: list[Manifest], name: str, kind: str, socket: str) -> None:
    ds = daemonset(manifests, name)
    assert ds["metadata"]["namespace"] == "kube-system"
    spec = ds["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["nodeSelector"] and spec["tolerations"]
    # The NPU plugin talks to kubelet only; the GPU plugin reads pod decisions from the API
    # server under its own service account (rules checked in test_rbac_rules_are_exact).
    if kind == "npu":
        assert spec["automountServiceAccountToken"] is False
    else:
        assert spec["serviceAccountName"] == "keti-node-agent"
        assert spec.get("automountServiceAccountToken", True) is True
    if kind == "npu":
        plugin = container(spec, "plugin")
        argv = plugin["command"]
        assert argv[:3] == ["keti-ray", "plugin", kind]
        assert argv[argv.index("--plugin-dir") + 1] == C.DEVICE_PLUGIN_DIR
    else:  # the stand-alone node agent serves the GPU plugin (keti_ray/agent/standalone.py)
        plugin = container(spec, "agent")
        argv = plugin["command"]
        assert argv[:3] == ["keti-ray", "agent", "--standalone"]
        flags = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
        assert flags["--plugin-dir"] == C.DEVICE_PLUGIN_DIR
        assert flags["--apiserver"] == "incluster"
        socket_dir = flags["--pod-resources-socket"].rsplit("/", 1)[0]
        assert mount_path(plugin, "pod-resources") == socket_dir
        assert flags["--token-file"].startswith(mount_path(plugin, "agent-token") + "/")
    assert volume(spec, "device-plugins")["hostPath"]["path"] == C.DEVICE_PLUGIN_DIR
    assert mount_path(plugin, "device-plugins") == C.DEVICE_PLUGIN_DIR
    for probe in ("startupProbe", "livenessProbe"):
        assert plugin[probe]["exec"]["command"] == ["test", "-S", f"{C.DEVICE_PLUGIN_DIR}/{socket}"]
    for c in containers(spec):
        assert c["image"] == IMAGE
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        if c in spec["containers"]:
            assert "livenessProbe" in c, f"{name}/{c['name']} has no liveness probe"


def test_gpu_daemonset_paths_are_the_constants(manifests: list[Manifest]) -> None:
    spec = daemonset(manifests, "keti-gpu-plugin")["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    # off /tmp/nvidia-mps, which the NVIDIA runtime would mount into every GPU container
    assert host["mps-pipe"] == C.MPS_PIPE_HOST_DIR != C.MPS_PIPE_DIR
    assert host["mps-log"] == C.MPS_LOG_DIR
    assert host["vai-status"] == C.VAI_STATUS_HOST_DIR
    assert host["vai-shim"] == C.SHIM_HOST_DIR
    assert host["mps-shm"] == C.MPS_SHM_HOST_DIR  # the MPS server's shared memory, no hostIPC
    assert mount_path(container(spec, "agent"), "mps-shm") == "/dev/shm"
    for c in spec["containers"]:
        env = env_of(c)
        # Every env var that names a directory points where that directory is mounted.
        for var, vol in ((C.ENV_VAI_STATUS_DIR, "vai-status"),):
            assert env[var] == mount_path(c, vol) == host[vol]
        # the daemon's pipes at the tenants' path; Allocate is told where they are on the node
        assert env[C.ENV_MPS_PIPE_DIRECTORY] == mount_path(c, "mps-pipe") == C.MPS_PIPE_DIR
        args = c.get("command", []) + c.get("args", [])
        assert f"--mps-pipe-host-dir={host['mps-pipe']}" in args
        assert f"--mps-shm-host-dir={host['mps-shm']}" in args
        assert env[C.ENV_NVIDIA_VISIBLE_DEVICES] == "all"
    # The shim comes from the ConfigMap that `keti-ray shim configmap` prints.
    shim = volume(spec, "shim-src")["configMap"]
    assert shim["name"] == C.SHIM_CONFIGMAP_NAME
    assert shim["items"] == [{"key": C.SHIM_LIBRARY_NAME, "path": C.SHIM_LIBRARY_NAME}]
    install = container(spec, "install-shim")
    assert mount_path(install, "vai-shim") == "/host-vai"
    assert "mv -f" in install["command"][-1]  # write-then-rename: running pods keep their copy


@pytest.mark.parametrize("name", ["keti-npu-plugin"])
def test_ray_node_joins_the_allocator_with_the_node_resource(
    manifests: list[Manifest], name: str
) -> None:
    spec = daemonset(manifests, name)["spec"]["template"]["spec"]
    node = container(spec, "ray-node")
    script = node["args"][0].replace("\\\n", " ")
    start = next(line for line in script.splitlines() if "ray start" in line)
    argv = shlex.split(start)
    opts = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    assert "--block" in argv
    assert json.loads(opts["--resources"]) == {C.RAY_NODE_RESOURCE: 1}
    assert opts["--num-gpus"] == "0"  # GPUs go to pods through the plugin, not to Ray tasks
    # The head it joins is the RayService's head service.
    rs = next(m for m in manifests if m.kind == "RayService")
    host, port = env_of(node)["RAY_ADDRESS"].rsplit(":", 1)
    assert host == f"{rs.name}-head-svc.{rs.namespace}.svc.cluster.local" and port == "6379"
    probe_port = node["readinessProbe"]["httpGet"]["port"]
    assert opts["--dashboard-agent-listen-port"] == str(probe_port)


# --- RayService and the scheduler extender ---------------------------------------------------


def _scheduler_config(manifests: list[Manifest]) -> dict[str, Any]:
    cm = find(manifests, "ConfigMap", "keti-scheduler-config").doc
    return yaml.safe_load(cm["data"]["config.yaml"])


def test_scheduler_config_is_a_valid_kube_scheduler_configuration(
    manifests: list[Manifest],
) -> None:
    config = _scheduler_config(manifests)
    assert scheduler_config_errors(config) == []
    config["extenders"][0]["filterverb"] = "filter"
    assert any("filterverb" in e for e in scheduler_config_errors(config))


def test_extender_points_at_the_allocator_routes(manifests: list[Manifest]) -> None:
    from keti_ray.k8s.tlsgate import EXTENDER_PATHS

    config = _scheduler_config(manifests)
    (ext,) = config["extenders"]
    rs = next(m for m in manifests if m.kind == "RayService")
    gate_svc = find(manifests, "Service", "keti-allocator-scheduler").doc
    url = urlparse(ext["urlPrefix"])
    # kube-scheduler -> the TLS gate's Service, over HTTPS with a client certificate
    assert url.scheme == "https" and ext["enableHTTPS"] is True
    assert url.hostname == f"keti-allocator-scheduler.{rs.namespace}.svc.cluster.local"
    assert gate_svc["metadata"]["namespace"] == rs.namespace
    (svc_port,) = gate_svc["spec"]["ports"]
    assert url.port == svc_port["port"]
    verbs = [ext["filterVerb"], ext["prioritizeVerb"], ext["bindVerb"]]
    paths = [urlparse(f"{ext['urlPrefix']}/{v}").path for v in verbs]
    assert paths == ["/scheduler/filter", "/scheduler/prioritize", "/scheduler/bind"]
    assert set(paths) == set(EXTENDER_PATHS)  # exactly what the gate lets through
    assert [r["name"] for r in ext["managedResources"]] == [C.GPU_RESOURCE]
    # The gate's Service selects the head pods, whose tls-gate container serves the port.
    head_tpl = rs.doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    labels = head_tpl["metadata"]["labels"]
    assert gate_svc["spec"]["selector"].items() <= labels.items()
    gate = container(head_tpl["spec"], "tls-gate")
    gate_ports = {p["name"]: p["containerPort"] for p in gate["ports"]}
    assert svc_port["targetPort"] in gate_ports
    args = dict(a.split("=", 1) for a in gate["command"] if a.startswith("--"))
    assert args["--listen"] == f"0.0.0.0:{gate_ports[svc_port['targetPort']]}"
    # it forwards to Serve on loopback, where the head's Ray container serves API_PORT
    head = head_tpl["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["serve"] == C.DEFAULT_API_PORT
    assert args["--upstream"] == f"http://127.0.0.1:{C.DEFAULT_API_PORT}"
    # the gate's files come from Secrets mounted where its arguments say
    for flag, vol in (("--cert", "gate-tls"), ("--key", "gate-tls"), ("--client-ca", "gate-tls"),
                      ("--token-file", "gate-token")):  # fmt: skip
        assert args[flag].startswith(mount_path(gate, vol) + "/"), flag
    assert (
        volume(head_tpl["spec"], "gate-token")["secret"]["secretName"]
        == (env_of(head)[C.ENV_TOKEN]["secretKeyRef"]["name"])
    )
    # kube-scheduler's tlsConfig files are mounted from its Secret
    deploy = find(manifests, "Deployment", "keti-scheduler").doc["spec"]["template"]["spec"]
    (sched,) = deploy["containers"]
    tls = ext["tlsConfig"]
    for key in ("certFile", "keyFile", "caFile"):
        assert tls[key].startswith(mount_path(sched, "extender-tls") + "/"), key
    assert tls["serverName"] == url.hostname and not tls.get("insecure")
    # Pods that opt in name the profile's scheduler, and its leader lease is the one RBAC allows.
    (profile,) = config["profiles"]
    assert profile["schedulerName"] == "keti-scheduler"
    role = find(manifests, "Role", "keti-scheduler-leader-election").doc
    assert role["rules"][0]["resourceNames"] == [config["leaderElection"]["resourceName"]]
    cm_mount = mount_path(sched, "config")
    assert f"--config={cm_mount}/config.yaml" in sched["command"]


def test_no_host_ipc_and_host_pid_only_for_the_gpu_node_agent(manifests: list[Manifest]) -> None:
    for m in manifests:
        for where, spec in pod_specs(m):
            assert not spec.get("hostIPC"), f"{where} sets hostIPC"
            assert not spec.get("hostNetwork"), f"{where} sets hostNetwork"
            if spec.get("hostPID"):
                assert m.name == "keti-gpu-plugin", f"{where} sets hostPID"
                assert "agent" in {c["name"] for c in containers(spec)}


# --- references between objects --------------------------------------------------------------


def test_service_accounts_and_claims_exist(manifests: list[Manifest]) -> None:
    accounts = {(m.namespace, m.name) for m in manifests if m.kind == "ServiceAccount"}
    claims = {(m.namespace, m.name) for m in manifests if m.kind == "PersistentVolumeClaim"}
    for m in manifests:
        for where, spec in pod_specs(m):
            if "serviceAccountName" in spec:
                assert (m.namespace, spec["serviceAccountName"]) in accounts, where
            for v in spec.get("volumes", []):
                if "persistentVolumeClaim" in v:
                    ref = (m.namespace, v["persistentVolumeClaim"]["claimName"])
                    assert ref in claims, f"{where}: no PVC {ref}"
    for m in manifests:
        if m.kind in ("RoleBinding", "ClusterRoleBinding"):
            for s in m.doc["subjects"]:
                assert (s["namespace"], s["name"]) in accounts, m.where()
            ref = m.doc["roleRef"]
            if not ref["name"].startswith(("system:", "extension-apiserver-")):
                find(manifests, ref["kind"], ref["name"])


def test_every_rbac_rule_says_what_it_is_for() -> None:
    """Each rule in 10-rbac.yaml has a comment right above it."""
    lines = (MANIFEST_DIR / "10-rbac.yaml").read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if re.match(r"^\s+- apiGroups:", line)]
    assert rules
    for i in rules:
        assert lines[i - 1].strip().startswith("#"), f"10-rbac.yaml:{i + 1}: rule without comment"


def _rules(manifests: list[Manifest], name: str) -> set[tuple[str, str]]:
    role = find(manifests, "ClusterRole", name).doc
    out = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""] and "*" not in rule["verbs"]
        assert "*" not in rule["resources"] and not rule.get("resourceNames")
        out |= {(r, v) for r in rule["resources"] for v in rule["verbs"]}
    return out


def test_rbac_rules_are_exact(manifests: list[Manifest]) -> None:
    """The verbs issue 13 lists for the code; tests/k8s/test_e2e_k8s.py runs the code under
    these rules (the emulator enforces them) and checks each is used."""
    assert _rules(manifests, "keti-allocator") == {
        ("nodes", "get"),
        ("nodes", "list"),
        ("nodes", "watch"),
        ("pods", "get"),
        ("pods", "list"),
        ("pods", "watch"),
        ("pods", "patch"),
        ("pods/binding", "create"),
    }
    assert _rules(manifests, "keti-node-agent") == {("pods", "list"), ("nodes", "patch")}
    assert _rules(manifests, "keti-trainer") == {("nodes", "list")}  # keti-ray nodes --from-k8s


def test_keti_images_are_one_image(manifests: list[Manifest]) -> None:
    images = {c["image"] for _, _, c in all_containers(manifests) if "keti" in c["image"]}
    assert images == {IMAGE}


def test_namespaced_objects_name_their_namespace(manifests: list[Manifest]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for m in manifests:
        if m.kind not in cluster_scoped:
            assert m.namespace, f"{m.where()} has no namespace"


def test_the_gpu_agent_command_parses_with_the_cli(manifests: list[Manifest]) -> None:
    """The DaemonSet's `keti-ray agent ...` flags are the CLI's own (unknown ones would crash
    the container at start)."""
    import typer.main

    from keti_ray.cli import _register, app

    _register()
    spec = daemonset(manifests, "keti-gpu-plugin")["spec"]["template"]["spec"]
    argv = container(spec, "agent")["command"]
    assert argv[0] == "keti-ray"
    group = typer.main.get_command(app)
    cmd = group.get_command(None, argv[1])
    ctx = cmd.make_context(argv[1], list(argv[2:]), resilient_parsing=False)
    assert ctx.params["standalone"] is True
    assert ctx.params["allocator_url"].endswith(f":{C.DEFAULT_API_PORT}")
    with pytest.raises(Exception, match="No such option"):
        cmd.make_context(argv[1], [*argv[2:], "--no-such-flag"])


def test_the_tls_gate_command_parses(manifests: list[Manifest]) -> None:
    from keti_ray.k8s.tlsgate import build_parser

    rs = find(manifests, "RayService", "keti-allocator").doc
    gate = container(
        rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"], "tls-gate"
    )
    assert gate["command"][:3] == ["python", "-m", "keti_ray.k8s.tlsgate"]
    args = build_parser().parse_args(gate["command"][3:])
    assert args.client_ca and args.token_file and args.cert and args.key


def _entrypoint_commands(entrypoint: str) -> tuple[dict[str, str], list[list[str]]]:
    """A RayJob entrypoint (a shell line) as its variable assignments and its commands."""
    assigned, commands = {}, []
    for part in entrypoint.split("&&"):
        assignment = re.match(r"^\s*([A-Z_]+)=(\S+(?: \S+\))?)\s*$", part)
        if assignment:  # NAME=value, where the value may be one $(...) with a space
            assigned[assignment[1]] = assignment[2]
        else:
            commands.append(shlex.split(part))
    return assigned, commands


def test_the_retrain_job_passes_the_live_node_list(manifests: list[Manifest]) -> None:
    """`keti-ray retrain` needs `--nodes` (no simulated nodes): the RayJob writes the API
    server's node list into the run folder first and retrains on that file. Both commands
    parse with the CLI, and the training head runs as the account allowed to list nodes."""
    import typer.main

    from keti_ray.cli import _register, app

    _register()
    group = typer.main.get_command(app)
    job = find(manifests, "RayJob", "keti-retrain").doc
    assigned, commands = _entrypoint_commands(job["spec"]["entrypoint"])
    assert [argv[:2] for argv in commands] == [["keti-ray", "nodes"], ["keti-ray", "retrain"]]
    params = {}
    for argv in commands:
        cmd = group.get_command(None, argv[1])
        params[argv[1]] = cmd.make_context(argv[1], list(argv[2:])).params
    nodes, retrain = params["nodes"], params["retrain"]
    assert nodes["from_k8s"] is True and nodes["apiserver"] == C.K8S_IN_CLUSTER
    assert str(retrain["nodes"]) == str(nodes["out"])  # the file just written
    assert str(nodes["out"]).startswith("$RUN/") and str(retrain["out"]) == "$RUN"
    assert "RUN" in assigned and assigned["RUN"].startswith("/data/retrain/run-")
    training = find(manifests, "RayCluster", "keti-ray").doc["spec"]["headGroupSpec"]
    assert training["template"]["spec"]["serviceAccountName"] == "keti-trainer"
    binding = find(manifests, "ClusterRoleBinding", "keti-trainer").doc
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "keti-trainer", "namespace": "keti-ray"}
    ]
