"""The deployment files: deploy/kuberay (checked strictly against the Kubernetes API's own models, the
RayCluster against a subset of KubeRay's CRD and its pod templates against the models too),
deploy/local (compose + Prometheus), and the Dockerfile — each against the others and against the
flags the CLI and `ray start` really accept, so a renamed flag or port breaks this test, not a
deployment."""
from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes.client
import pytest
import yaml

from coordinator.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"
LOCAL = REPO / "deploy" / "local"
PROMETHEUS_KUBERAY = REPO / "deploy" / "prometheus" / "kuberay"
RAYCLUSTER_SCHEMA = REPO / "tests" / "data" / "kuberay" / "raycluster-v1-subset.schema.json"
APPLIED_SEPARATELY = {"ray-auth-secret.yaml"}  # a Secret template, kept out of kustomization.yaml
GPU = "nvidia.com/gpu"
GRPC_SHUTDOWN_GRACE_S = 5  # coordinator/server.py: server.stop(grace=5)

# ---------------------------------------------------------------------------------------------
# Loading


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERAY.glob("*.yaml") if p.name != "kustomization.yaml")


def kuberay_objects() -> list[dict]:
    return [doc for path in manifest_files() for doc in load_documents(path)]


def the_object(kind: str, name: str | None = None) -> dict:
    found = [o for o in kuberay_objects() if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/kuberay, found {len(found)}"
    return found[0]


def raycluster() -> dict:
    return the_object("RayCluster")


def ray_groups(cluster: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) for the head and every worker group."""
    spec = cluster["spec"]
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def worker_group(cluster: dict, role: str) -> dict:
    workers = [g for _, g in ray_groups(cluster)[1:]]
    found = [g for g in workers if g["template"]["metadata"]["labels"]["internvideo.io/role"] == role]
    assert len(found) == 1, f"expected one worker group labelled internvideo.io/role={role}"
    return found[0]


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's convention: the first is Ray's


def coordinator_pod() -> dict:
    return the_object("Deployment", "internvideo-coordinator")["spec"]["template"]["spec"]


def container(pod: dict, name: str) -> dict:
    every = pod.get("containers", []) + pod.get("initContainers", [])
    return next(c for c in every if c["name"] == name)


def dockerfile_instruction(name: str) -> str:
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, f"expected one {name} in the Dockerfile"
    return lines[0].removeprefix(name + " ").strip()


def image_entrypoint() -> list[str]:
    return json.loads(dockerfile_instruction("ENTRYPOINT"))


def internvideo_argv(c: dict) -> list[str]:
    """A container's argv without the leading `internvideo` (the image's entrypoint when unset)."""
    argv = (c.get("command") or image_entrypoint()) + c.get("args", [])
    assert argv[0] == "internvideo", f"container {c['name']} does not run internvideo: {argv}"
    return argv[1:]


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """``internvideo`` ARGV as the CLI parses it; a flag it does not accept fails the test."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`internvideo {shlex.join(argv)}` is refused by the CLI (argparse's reason is above)")


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# ---------------------------------------------------------------------------------------------
# Strict check against the Kubernetes client's models


def model_class(name: str) -> type:
    return getattr(kubernetes.client.models, name)


def model_name(api_version: str, kind: str) -> str:
    """`apps/v1` Deployment → V1Deployment, `v1` Service → V1Service."""
    version = api_version.rpartition("/")[2]
    return version[0].upper() + version[1:] + kind


# Version 37 of the client spells its collection types List[X] and Dict[str, X]; older ones wrote
# list[X] and dict(str, X).
LIST_TYPE = re.compile(r"^[Ll]ist\[(?P<item>.+)\]$")
DICT_TYPE = re.compile(r"^(?:Dict\[str, (?P<item>.+)\]|dict\(str, (?P<old_item>.+)\))$")
SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
    "datetime": (str,), "date": (str,), "bytes": (str,),  # as YAML writes them
    "object": (str, int, dict, list),  # IntOrString (ports, quantities elsewhere), raw extensions
}


def strict_errors(value: object, type_name: str, path: str) -> list[str]:
    """Every key the model does not know, and every value of the wrong type, by dotted path."""
    if match := LIST_TYPE.match(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list ({type_name}), got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in strict_errors(item, match["item"], f"{path}[{i}]")]
    if match := DICT_TYPE.match(type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping ({type_name}), got {type(value).__name__}"]
        item_type = match["item"] or match["old_item"]
        return [e for key, item in value.items() for e in strict_errors(item, item_type, f"{path}.{key}")]
    if type_name in SCALARS:
        allowed = SCALARS[type_name]
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            return [f"{path}: expected {type_name}, got {type(value).__name__} {value!r}"]
        return []
    return model_errors(value, model_class(type_name), path)


def model_errors(value: object, model: type, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected a mapping ({model.__name__}), got {type(value).__name__}"]
    attribute_of = {json_key: attr for attr, json_key in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in attribute_of:
            errors.append(f"{where}: unknown field of {model.__name__}")
        elif item is not None:
            errors.extend(strict_errors(item, model.openapi_types[attribute_of[key]], where))
    return errors


def deserialize(data: dict, name: str) -> object:
    """The client's own deserializer: it checks required fields and types (and drops unknown keys,
    which ``strict_errors`` reports)."""
    return kubernetes.client.ApiClient()._ApiClient__deserialize(copy.deepcopy(data), name)


def check_against_model(data: dict, name: str, path: str = "") -> None:
    errors = strict_errors(data, name, path)
    assert not errors, "\n".join(errors)
    deserialize(data, name)


def raycluster_schema() -> dict:
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def check_raycluster(cluster: dict) -> None:
    jsonschema.Draft7Validator(raycluster_schema()).validate(cluster)
    check_against_model(cluster["metadata"], "V1ObjectMeta", "metadata")
    spec = cluster["spec"]
    check_against_model(spec["headGroupSpec"]["template"], "V1PodTemplateSpec", "spec.headGroupSpec.template")
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        check_against_model(group["template"], "V1PodTemplateSpec", f"spec.workerGroupSpecs[{i}].template")


# ---------------------------------------------------------------------------------------------
# Every object is what its API accepts


def test_every_builtin_object_matches_the_kubernetes_models_strictly() -> None:
    builtins = [o for o in kuberay_objects() if o["apiVersion"] != "ray.io/v1"]
    assert {o["kind"] for o in builtins} >= {"Deployment", "Service", "PersistentVolumeClaim", "ServiceAccount",
                                             "Secret"}
    for obj in builtins:
        check_against_model(obj, model_name(obj["apiVersion"], obj["kind"]))
        assert "namespace" not in obj["metadata"], "the namespace comes from kustomization.yaml"


def test_the_raycluster_matches_the_crd_subset_and_its_pod_templates_the_models() -> None:
    cluster = raycluster()
    check_raycluster(cluster)
    assert "namespace" not in cluster["metadata"]


def test_a_misspelt_deployment_field_is_rejected_by_its_path() -> None:
    deployment = copy.deepcopy(the_object("Deployment", "internvideo-coordinator"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(AssertionError, match=re.escape("spec.template.spec.containers[0].imagePullPolicyy")):
        check_against_model(deployment, "V1Deployment")


def test_a_missing_required_field_is_rejected() -> None:
    deployment = copy.deepcopy(the_object("Deployment", "internvideo-coordinator"))
    del deployment["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):  # pydantic's ValidationError is a ValueError
        check_against_model(deployment, "V1Deployment")


def test_an_unknown_worker_group_field_is_rejected_by_the_schema() -> None:
    cluster = copy.deepcopy(raycluster())
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        check_raycluster(cluster)


def test_ray_start_params_must_be_strings() -> None:
    cluster = copy.deepcopy(raycluster())
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(jsonschema.ValidationError):
        check_raycluster(cluster)


@pytest.mark.parametrize("breakage, message", [
    (lambda pod: pod.update(containers={}), "spec.containers: expected a list"),
    (lambda pod: pod["containers"][0].update(ports=[{"containerPort": "x"}]),
     "spec.containers[0].ports[0].containerPort: expected int"),
    (lambda pod: pod["containers"][0]["resources"].update(limit={"cpu": "1"}),
     "spec.containers[0].resources.limit: unknown field"),
])
def test_a_broken_pod_template_inside_the_raycluster_is_rejected(breakage, message: str) -> None:
    cluster = copy.deepcopy(raycluster())
    breakage(cluster["spec"]["workerGroupSpecs"][1]["template"]["spec"])
    with pytest.raises(AssertionError, match=re.escape(f"spec.workerGroupSpecs[1].template.{message}")):
        check_raycluster(cluster)


# ---------------------------------------------------------------------------------------------
# The RayCluster is what the coordinator and Prometheus expect


def test_the_coordinator_joins_the_rayclusters_head_service() -> None:
    cluster = raycluster()
    gcs_port = cluster["spec"]["headGroupSpec"]["rayStartParams"].get("port", "6379")
    head_service = f"{cluster['metadata']['name']}-head-svc:{gcs_port}"  # KubeRay's name for it
    pod = coordinator_pod()
    assert flag_value(internvideo_argv(container(pod, "coordinator")), "--ray-address") == head_service
    assert f"--address={head_service}" in container(pod, "ray-node")["command"]


def test_every_ray_container_exposes_the_port_the_podmonitor_scrapes() -> None:
    podmonitor = load_documents(PROMETHEUS_KUBERAY / "podmonitor-ray.yaml")[0]
    scraped = {endpoint["port"] for endpoint in podmonitor["spec"]["podMetricsEndpoints"]}
    assert scraped == {"metrics"}
    for name, group in ray_groups(raycluster()):
        ports = {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]}
        assert "metrics" in ports, f"Ray container of {name} has no port named metrics"
        assert str(ports["metrics"]) == group["rayStartParams"].get("metrics-export-port", "8080"), name


def test_trainers_request_one_gpu_and_decode_workers_none() -> None:
    cluster = raycluster()
    trainer_resources = ray_container(worker_group(cluster, "trainer"))["resources"]
    assert trainer_resources["requests"][GPU] == trainer_resources["limits"][GPU] == "1"
    decode = worker_group(cluster, "decode")
    decode_resources = ray_container(decode)["resources"]
    assert GPU not in decode_resources.get("requests", {}) and GPU not in decode_resources.get("limits", {})
    assert decode["rayStartParams"].get("num-gpus") == "0"
    for group in (worker_group(cluster, "trainer"), decode):
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_ray_start_params_are_options_of_ray_start() -> None:
    from ray.scripts.scripts import start

    options = {opt for param in start.params for opt in param.opts}
    for name, group in ray_groups(raycluster()):
        unknown = {key for key in group["rayStartParams"] if f"--{key}" not in options}
        assert not unknown, f"{name}: not options of `ray start`: {unknown}"
    argv = container(coordinator_pod(), "ray-node")["command"]
    assert argv[:2] == ["ray", "start"]
    start.make_context("start", argv[2:])  # raises on an unknown option or a bad value


def test_every_ray_node_and_the_driver_use_rays_token_from_the_secret() -> None:
    secret = the_object("Secret", "internvideo-ray-auth")
    pod = coordinator_pod()
    containers = [ray_container(g) for _, g in ray_groups(raycluster())]
    containers += [container(pod, "coordinator"), container(pod, "ray-node")]
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], c["name"]


def test_one_image_for_every_ray_node_and_the_coordinator_with_the_pinned_ray() -> None:
    cluster = raycluster()
    pod = coordinator_pod()
    images = {ray_container(g)["image"] for _, g in ray_groups(cluster)}
    images |= {c["image"] for c in pod["containers"] + pod["initContainers"]}
    assert len(images) == 1, images
    pin = re.search(r'"ray\[default\]==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert cluster["spec"]["rayVersion"] == pin


def test_every_pod_mounts_storage_and_read_only_data_from_the_claims() -> None:
    claims = {o["metadata"]["name"] for o in kuberay_objects() if o["kind"] == "PersistentVolumeClaim"}
    pods = [(name, g["template"]["spec"], ray_container(g)) for name, g in ray_groups(raycluster())]
    pods.append(("coordinator", coordinator_pod(), container(coordinator_pod(), "coordinator")))
    for name, pod, c in pods:
        claim_of = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                    if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert claim_of[mounts["/storage"]["name"]] == "internvideo-storage", name
        assert claim_of[mounts["/data"]["name"]] == "internvideo-data", name
        assert mounts["/data"].get("readOnly") is True, name
        assert set(claim_of.values()) <= claims, name


# ---------------------------------------------------------------------------------------------
# The coordinator's Deployment and Service


def serve_arguments() -> argparse.Namespace:
    argv = internvideo_argv(container(coordinator_pod(), "coordinator"))
    assert argv[0] == "serve"
    return parse_cli(argv)


def test_the_coordinators_flags_are_ones_internvideo_serve_accepts() -> None:
    args = serve_arguments()
    assert args.worker_host is None  # each worker listens on its own node's address
    # Reached through its Service: it must listen beyond the pod's loopback.
    assert args.listen.rpartition(":")[0] not in ("127.0.0.1", "localhost", "::1")


def test_the_coordinators_paths_lie_on_its_volumes() -> None:
    args, pod = serve_arguments(), coordinator_pod()
    mounts = {m["mountPath"]: m["name"] for m in container(pod, "coordinator")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert args.data_root == ["/data"] and args.storage_root == ["/storage"]
    assert Path(args.state_dir).is_relative_to("/storage")
    tls = volumes[mounts[str(Path(args.tls_cert).parent)]]["secret"]
    assert tls["secretName"] == "internvideo-coordinator-tls"
    assert {Path(args.tls_cert).name, Path(args.tls_key).name} == {"tls.crt", "tls.key"}  # kubernetes.io/tls keys


def test_the_kubelet_waits_longer_than_the_coordinators_shutdown() -> None:
    deployment = the_object("Deployment", "internvideo-coordinator")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > serve_arguments().shutdown_timeout + GRPC_SHUTDOWN_GRACE_S
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


def test_the_coordinator_runs_unprivileged_on_a_read_only_root() -> None:
    pod = coordinator_pod()
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"] + pod["initContainers"]:
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, c["name"]
        assert context["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, c["name"]


def test_the_service_matches_the_container_ports_and_the_prometheus_scrape_config() -> None:
    args = serve_arguments()
    service = the_object("Service", "internvideo-coordinator")
    deployment = the_object("Deployment", "internvideo-coordinator")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in container(coordinator_pod(), "coordinator")["ports"]}
    assert ports["metrics"]["port"] == container_ports[ports["metrics"]["targetPort"]] == args.metrics_port == 9464
    assert container_ports[ports["grpc"]["targetPort"]] == int(args.listen.rpartition(":")[2])
    scrape = load_documents(PROMETHEUS_KUBERAY / "scrapeconfig-internvideo.yaml")[0]
    url = urlsplit(scrape["spec"]["httpSDConfigs"][0]["url"])
    assert (url.hostname, url.port, url.path) == (service["metadata"]["name"], ports["metrics"]["port"], "/targets")


def test_the_probes_dial_the_grpc_port() -> None:
    c = container(coordinator_pod(), "coordinator")
    port = int(serve_arguments().listen.rpartition(":")[2])
    for probe in (c["readinessProbe"], c["livenessProbe"]):
        assert probe["tcpSocket"]["port"] == port


def test_the_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = load_documents(KUBERAY / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    assert all((KUBERAY / name).is_file() for name in listed)
    assert listed == {p.name for p in manifest_files()} - APPLIED_SEPARATELY


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_kustomize_renders_every_applied_object_into_the_namespace() -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBERAY)], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc is not None]
    applied = [o for path in manifest_files() if path.name not in APPLIED_SEPARATELY for o in load_documents(path)]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == \
        sorted((o["kind"], o["metadata"]["name"]) for o in applied)
    namespace = load_documents(KUBERAY / "kustomization.yaml")[0]["namespace"]
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}


# ---------------------------------------------------------------------------------------------
# The image and the local deployment


def test_the_image_runs_internvideo_and_serves_by_default() -> None:
    assert image_entrypoint() == ["internvideo"]
    argv = json.loads(dockerfile_instruction("CMD"))
    assert argv[0] == "serve"
    parse_cli(argv)
    assert {"50051", "9464", "8080"} <= set(dockerfile_instruction("EXPOSE").split())
    assert dockerfile_instruction("USER") == "1000"


def compose() -> dict:
    return load_documents(LOCAL / "compose.yaml")[0]


def host_path(mount: str) -> Path:
    return (LOCAL / mount.split(":")[0]).resolve()


def test_the_compose_coordinator_is_built_here_and_runs_flags_serve_accepts() -> None:
    coordinator = compose()["services"]["coordinator"]
    assert (LOCAL / coordinator["build"]["context"]).resolve() == REPO
    argv = coordinator["command"]
    args = parse_cli(argv)
    assert argv[0] == "serve" and args.state_dir == "/state"
    assert [v.split(":")[1] for v in coordinator["volumes"]] == ["/state"]


def test_compose_publishes_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond this machine"


def test_compose_mounts_files_that_exist() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        for mount in services[name]["volumes"]:
            assert host_path(mount).exists(), f"{name} mounts {mount}, which does not exist"
    provisioning = host_path(services["grafana"]["volumes"][0])
    assert (provisioning / "dashboards").is_dir() and (provisioning / "datasources").is_dir()


def test_grafana_gets_every_variable_its_provisioning_reads() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(m.split(":")[:2] for m in grafana["volumes"])
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = REPO / "deploy" / "grafana" / "provisioning"
    wanted = {v for p in provisioning.rglob("*.yaml") for v in re.findall(r"\$\{(\w+)\}", p.read_text())}
    assert wanted == set(grafana["environment"])
    assert grafana["environment"]["INTERNVIDEO_DASHBOARDS"] == mounts["../grafana/dashboards"]
    assert urlsplit(grafana["environment"]["PROMETHEUS_URL"]).hostname == "prometheus"


def test_local_prometheus_discovers_targets_at_the_coordinators_metrics_port() -> None:
    services = compose()["services"]
    config_mount = next(m for m in services["prometheus"]["volumes"] if m.endswith("prometheus.yml:ro"))
    config = load_documents(host_path(config_mount))[0]
    (job,) = config["scrape_configs"]
    assert job["honor_labels"] is True
    metrics_port = parse_cli(services["coordinator"]["command"]).metrics_port
    assert [sd["url"] for sd in job["http_sd_configs"]] == [f"http://coordinator:{metrics_port}/targets"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_local_prometheus_config() -> None:
    subprocess.run(["promtool", "check", "config", str(LOCAL / "prometheus.yml")], capture_output=True, check=True,
                   timeout=60)


def test_the_readmes_commands_use_flags_the_cli_accepts() -> None:
    for readme in (KUBERAY / "README.md", LOCAL / "README.md"):
        text = readme.read_text().replace("\\\n", " ")
        for line in re.findall(r"internvideo ((?:serve|token|quota|submit|data) [^\n]+)", text):
            argv = [a for a in shlex.split(line.split("#")[0]) if a != "--"]
            argv = [a.replace("<", "").replace(">", "") for a in argv]
            parse_cli(argv)
