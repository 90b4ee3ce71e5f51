"""Kubernetes: every overlay renders with kustomize; every object passes kubernetes-validate --strict
for 1.30 and the newest version it knows; custom resources carry their required fields; the security,
probe, scaling and exposure rules a platform team expects hold for every workload."""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .ops_helpers import REPO, load_rule_groups, run

OVERLAYS = ["dev", "prod"]
KUBERNETES_VALIDATE = REPO / ".venv" / "bin" / "kubernetes-validate"
CUSTOM_GROUPS = ("rabbitmq.com/", "monitoring.coreos.com/")


@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    result = run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / overlay)])
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def newest_kubernetes_version() -> str:
    import kubernetes_validate

    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    versions = [name.removeprefix("v").removesuffix("-local-strict") for name in
                (path.name for path in schemas.iterdir()) if name.endswith("-local-strict")]
    return max(versions, key=lambda version: tuple(int(part) for part in version.split(".")))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] == kind]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] in {"Deployment", "StatefulSet", "Job"}]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", ["1.30.0", "newest"])
def test_every_core_object_validates_strictly(overlay: str, version: str, tmp_path: Path) -> None:
    if not shutil.which(str(KUBERNETES_VALIDATE)):
        pytest.fail("kubernetes-validate is missing from .venv: it is pinned in requirements.lock (make deps)")
    version = newest_kubernetes_version() if version == "newest" else version
    core = [item for item in rendered(overlay) if not item["apiVersion"].startswith(CUSTOM_GROUPS)]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core))
    result = run([str(KUBERNETES_VALIDATE), "--strict", "-k", version, str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(core), result.stdout


# Required fields of the custom resources, from the CRDs of the RabbitMQ cluster operator
# (rabbitmq.com/v1beta1 RabbitmqCluster) and the Prometheus operator (monitoring.coreos.com/v1).
def check_custom_resource(item: dict[str, Any]) -> list[str]:
    problems = []
    spec = item.get("spec", {})
    if item["kind"] == "RabbitmqCluster":
        if not isinstance(spec.get("replicas"), int) or spec["replicas"] < 1 or spec["replicas"] % 2 == 0:
            problems.append("replicas must be an odd number >= 1 (quorum queues)")
        if "rabbitmq_prometheus" not in spec.get("rabbitmq", {}).get("additionalPlugins", []):
            problems.append("rabbitmq_prometheus plugin missing")
        for field in ("requests", "limits"):
            if not spec.get("resources", {}).get(field):
                problems.append(f"resources.{field} missing")
    elif item["kind"] == "ServiceMonitor":
        if not spec.get("selector", {}).get("matchLabels"):
            problems.append("selector.matchLabels missing")
        for endpoint in spec.get("endpoints", []) or [None]:
            if not endpoint or not endpoint.get("port"):
                problems.append("every endpoint needs a port name")
    elif item["kind"] == "PrometheusRule":
        for group in spec.get("groups", []) or [None]:
            if not group or not group.get("name") or not group.get("rules"):
                problems.append("every group needs a name and rules")
                continue
            for rule in group["rules"]:
                if "expr" not in rule or ("alert" in rule) == ("record" in rule):
                    problems.append(f"bad rule {rule}")
    else:
        problems.append(f"unexpected custom resource {item['kind']}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_have_their_required_fields(overlay: str) -> None:
    objects = rendered(overlay)
    custom = [item for item in objects if item["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {item["kind"] for item in custom} == {"RabbitmqCluster", "ServiceMonitor", "PrometheusRule"}
    problems = {f"{item['kind']}/{item['metadata']['name']}": check_custom_resource(item) for item in custom}
    assert {key: value for key, value in problems.items() if value} == {}
    assert of_kind(objects, "PrometheusRule")[0]["spec"]["groups"] == load_rule_groups()
    # Every ServiceMonitor selects a Service that has the named port.
    services = of_kind(objects, "Service")
    for monitor in of_kind(objects, "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        selected = [service for service in services
                    if wanted.items() <= service["metadata"].get("labels", {}).items()]
        if monitor["metadata"]["name"] == "lianxiao-rabbitmq":
            continue  # its Service is created by the RabbitMQ operator
        assert selected, monitor["metadata"]["name"]
        ports = {port.get("name") for service in selected for port in service["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports


def test_custom_resource_check_can_fail() -> None:
    assert check_custom_resource({"kind": "RabbitmqCluster", "spec": {"replicas": 2}})
    assert check_custom_resource({"kind": "PrometheusRule", "spec": {"groups": [{"name": "x", "rules": [{}]}]}})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_locked_down(overlay: str) -> None:
    for workload in workloads(rendered(overlay)):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        # Only the relay data plane uses its node's network: its per-output UDP sockets span a port range
        # no Service can name (k8s/base/relay-dataplane.yaml); it still runs unprivileged, one pod per node.
        assert not pod.get("hostNetwork") or name == "StatefulSet/relay-dataplane", name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in context["capabilities"], name
            for field in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][field].keys(), f"{name} {field}"
            if workload["kind"] != "Job":
                assert "readinessProbe" in container and "livenessProbe" in container, name
            assert container["image"].startswith(
                ("registry.example.org/lianxiao/lianxiao:", "registry.example.org/lianxiao/lianxiao-nginx:",
                 "registry.example.org/lianxiao/lianxiao-ingest:")
            ), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_only_referenced(overlay: str) -> None:
    objects = rendered(overlay)
    assert of_kind(objects, "Secret") == []
    text = yaml.safe_dump_all(objects)
    referenced = set(re.findall(r"secretKeyRef:\n\s+key: \S+\n\s+name: (\S+)", text))
    assert referenced == {"lianxiao-secrets", "lianxiao-rabbitmq-default-user"}
    for workload in workloads(objects):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                if re.search(r"URL|URI|SECRET|PASSWORD", variable["name"]):
                    # Either from a Secret, or composed only of variables that come from one.
                    assert "valueFrom" in variable or re.fullmatch(r"[a-z]+://\$\(\w+\):\$\(\w+\)@\$\(\w+\):\d+/",
                                                                  variable["value"]), variable


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_deployment_scales_and_survives_drains(overlay: str) -> None:
    objects = rendered(overlay)
    deployments = {item["metadata"]["name"] for item in of_kind(objects, "Deployment")}
    assert deployments == {"accounts", "activities", "reporting", "classroom-relay", "resources", "gateway"}
    scaled = {item["spec"]["scaleTargetRef"]["name"] for item in of_kind(objects, "HorizontalPodAutoscaler")}
    assert scaled == deployments
    budgets = of_kind(objects, "PodDisruptionBudget")
    for deployment in of_kind(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [pdb for pdb in budgets if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, deployment["metadata"]["name"]
        spec = covering[0]["spec"]
        # A budget that can never be satisfied blocks every node drain.
        assert spec.get("minAvailable", 0) < deployment["spec"]["replicas"], deployment["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_and_media_are_reachable_from_outside(overlay: str) -> None:
    objects = rendered(overlay)
    policies = of_kind(objects, "NetworkPolicy")
    assert any(policy["spec"]["podSelector"] == {} and "ingress" not in policy["spec"] for policy in policies), \
        "a default-deny ingress policy"
    open_to_all = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if "from" not in rule:
                open_to_all.add(policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
                if policy["metadata"]["name"] == "relay-media-public":
                    # The media range, and RTMP from recording hosts to the ingest beside the data plane.
                    assert rule["ports"] in ([{"port": 40000, "endPort": 40999, "protocol": "UDP"}],
                                             [{"port": 1935, "protocol": "TCP"}])
    assert open_to_all == {"gateway", "relay-dataplane"}
    ingresses = of_kind(objects, "Ingress")
    backends = {path["backend"]["service"]["name"] for ingress in ingresses
                for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]}
    assert backends == {"gateway"}
    public_services = [service for service in of_kind(objects, "Service")
                       if service["spec"].get("type") in {"LoadBalancer", "NodePort"}]
    for service in public_services:
        assert service["metadata"]["name"].startswith("relay-dataplane-"), service["metadata"]["name"]
        assert {port["protocol"] for port in service["spec"]["ports"]} == {"UDP"}
        assert service["spec"]["externalTrafficPolicy"] == "Local"  # senders are pinned by source address


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_dataplane_pod_binds_its_media_port_range_on_its_node(overlay: str) -> None:
    """One socket per output inside RELAY_MEDIA_PORTS: the pod uses its node's network (a Service cannot
    name a port range), one pod per node, and every pod has its public address for SDPs and tokens."""
    objects = rendered(overlay)
    (dataplane,) = [item for item in of_kind(objects, "StatefulSet") if item["metadata"]["name"] == "relay-dataplane"]
    pod = dataplane["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0][
        "topologyKey"] == "kubernetes.io/hostname"
    container, ingest = pod["containers"]
    variables = {variable["name"]: variable for variable in container["env"]}
    low, high = (int(port) for port in variables["RELAY_MEDIA_PORTS"]["value"].split("-"))
    assert "--media-port=40000" in container["command"] and (low, high) == (40000, 40999)
    media = {port["name"]: port["containerPort"] for port in container["ports"] if port["protocol"] == "UDP"}
    assert media == {"rtp": low, "rtcp": low + 1}
    assert "optional" not in variables["RELAY_CONTROL_SECRET"]["valueFrom"]["secretKeyRef"]
    (config,) = [item for item in of_kind(objects, "ConfigMap")
                 if item["metadata"]["name"].startswith("lianxiao-config")]
    hosts = dict(pair.split("=") for pair in config["data"]["RELAY_DATAPLANE_PUBLIC_HOSTS"].split(","))
    assert len(hosts) == dataplane["spec"]["replicas"]
    # The ingest beside each data plane takes RTMP on its node's 1935, and recording hosts are told that address.
    assert ingest["command"][:3] == ["python", "-m", "services.classroom_relay.ingest"]
    assert {port["name"]: port["containerPort"] for port in ingest["ports"]}["rtmp"] == 1935
    rtmp_urls = dict(pair.split("=", 1) for pair in config["data"]["RELAY_RTMP_PUBLIC_URLS"].split(","))
    assert rtmp_urls == {name: f"rtmp://{host}:1935/live" for name, host in hosts.items()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_that_exist(overlay: str) -> None:
    objects = rendered(overlay)
    pod_labels = [workload["spec"]["template"]["metadata"]["labels"] for workload in workloads(objects)]
    for service in of_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        if "statefulset.kubernetes.io/pod-name" in selector:
            continue  # set by the StatefulSet controller on each pod
        assert any(selector.items() <= labels.items() for labels in pod_labels), service["metadata"]["name"]


def test_migration_job_runs_the_migrations() -> None:
    (job,) = of_kind(rendered("prod"), "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python", "-m", "services.common.migrations", "upgrade"
    ]


def dataplane_rules_for_port(objects: list[dict], port_number: int) -> list[dict]:
    """The NetworkPolicy ingress rules of the data-plane pods that open `port_number`."""
    return [rule for policy in of_kind(objects, "NetworkPolicy")
            if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "relay-dataplane"
            for rule in policy["spec"]["ingress"] if any(port["port"] == port_number for port in rule["ports"])]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_relay_control_plane_reaches_every_dataplane_pod_and_only_it_does(overlay: str) -> None:
    from services.classroom_relay.placement import parse_dataplanes

    objects = rendered(overlay)
    (config,) = [item for item in of_kind(objects, "ConfigMap")
                 if item["metadata"]["name"].startswith("lianxiao-config")]
    specs = parse_dataplanes(config["data"]["RELAY_DATAPLANES"],
                             public_hosts=config["data"]["RELAY_DATAPLANE_PUBLIC_HOSTS"])
    (dataplane,) = [item for item in of_kind(objects, "StatefulSet") if item["metadata"]["name"] == "relay-dataplane"]
    service = dataplane["spec"]["serviceName"]
    assert [spec.address for spec in specs] == [
        f"relay-dataplane-{index}.{service}:7070" for index in range(dataplane["spec"]["replicas"])
    ]
    assert all(spec.public_host for spec in specs), "every data plane needs its public media address"
    container, ingest = dataplane["spec"]["template"]["spec"]["containers"]
    assert "--control-port=7070" in container["command"] and "--control-host=0.0.0.0" in container["command"]
    from_control_plane = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "classroom-relay"}}}]
    assert dataplane_rules_for_port(objects, 7070) == [{"from": from_control_plane,
                                                        "ports": [{"port": 7070, "protocol": "TCP"}]}]
    # Each pod's ingest is told which classrooms to carry by the control plane alone, with the same secret.
    ingest_addresses = dict(pair.split("=") for pair in config["data"]["RELAY_INGESTS"].split(","))
    assert ingest_addresses == {spec.name: spec.address.replace(":7070", ":7080") for spec in specs}
    assert "--control-port=7080" in ingest["command"]
    assert ingest["env"] == [variable for variable in container["env"] if variable["name"] == "RELAY_CONTROL_SECRET"]
    assert dataplane_rules_for_port(objects, 7080) == [{"from": from_control_plane,
                                                        "ports": [{"port": 7080, "protocol": "TCP"}]}]
    (relay,) = [item for item in of_kind(objects, "Deployment") if item["metadata"]["name"] == "classroom-relay"]
    variables = {variable["name"]: variable for variable in relay["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert variables["RELAY_JOIN_SECRETS"]["valueFrom"]["secretKeyRef"]["name"] == "lianxiao-secrets"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_recorder_sits_beside_every_dataplane_with_its_volume_and_only_the_relay_reaches_it(overlay: str) -> None:
    """docs/recording.md: one recorder per data plane (RELAY_RECORDERS names each), writing to the shared
    recordings volume; its control port only from the control plane, its RTP range only from the data planes."""
    objects = rendered(overlay)
    sets = {item["metadata"]["name"]: item for item in of_kind(objects, "StatefulSet")}
    recorder, dataplane = sets["relay-recorder"], sets["relay-dataplane"]
    assert recorder["spec"]["replicas"] == dataplane["spec"]["replicas"]
    pod = recorder["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "services.classroom_relay.recorder"]
    assert {"--control-host=0.0.0.0", "--control-port=7090", "--metrics-port=9467"} <= set(container["command"])
    variables = {variable["name"]: variable for variable in container["env"]}
    low, high = (int(port) for port in variables["RECORDER_MEDIA_PORTS"]["value"].split("-"))
    assert variables["RECORDER_MEDIA_HOST"]["value"] == "$(POD_IP)"
    assert variables["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert variables["RELAY_CONTROL_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "lianxiao-secrets"
    root = variables["RECORDINGS_ROOT"]["value"]
    (mount,) = [item for item in container["volumeMounts"] if item["mountPath"] == root]
    (volume,) = [item for item in pod["volumes"] if item["name"] == mount["name"]]
    claims = {item["metadata"]["name"]: item for item in of_kind(objects, "PersistentVolumeClaim")}
    claim = claims[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # nginx and the resources service read it too
    (config,) = [item for item in of_kind(objects, "ConfigMap")
                 if item["metadata"]["name"].startswith("lianxiao-config")]
    dataplanes = dict(pair.split("=") for pair in config["data"]["RELAY_DATAPLANES"].split(","))
    recorders = dict(pair.split("=") for pair in config["data"]["RELAY_RECORDERS"].split(","))
    assert recorders == {name: address.replace("relay-dataplane", "relay-recorder").replace(":7070", ":7090")
                         for name, address in dataplanes.items()}
    rules = [rule for policy in of_kind(objects, "NetworkPolicy")
             if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "relay-recorder"
             for rule in policy["spec"]["ingress"]]
    assert rules == [
        {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "classroom-relay"}}}],
         "ports": [{"port": 7090, "protocol": "TCP"}]},
        {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "relay-dataplane"}}}],
         "ports": [{"port": low, "endPort": high, "protocol": "UDP"}]},
    ]
    (relay,) = [item for item in of_kind(objects, "Deployment") if item["metadata"]["name"] == "classroom-relay"]
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in relay["spec"]["template"]["spec"]["containers"][0][
        "envFrom"]
