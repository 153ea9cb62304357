"""k8s/: every manifest and every rendered overlay validates offline against the Kubernetes OpenAPI
schemas (kubernetes-validate's strict schemas) and KubeRay's RayJob schema (k8s/schemas); broken
manifests fail; the deployment contract holds (probes, security, versions pinned once); and each
RayJob's entrypoint really runs, unchanged, on a local Ray cluster through KubeRay's submitter shell."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = ["base", "overlays/dev", "overlays/prod"]
RAYJOBS = ["edufilter-score", "edufilter-select", "edufilter-pretrain"]


def _load_tool(path: Path):
    """k8s/ holds scripts, not a package: load one as a module."""
    spec = importlib.util.spec_from_file_location(f"k8s_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) ships the Kubernetes schemas")
kustomize = _load_tool(K8S / "tools" / "kustomize.py")
validate = _load_tool(K8S / "tools" / "validate.py")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: kustomize.render(K8S / overlay) for overlay in OVERLAYS}


def by_key(resources: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["kind"], r["metadata"]["name"]): r for r in resources}


def manifest_files() -> list[Path]:
    return sorted(p for p in (K8S / "base").rglob("*.yaml") if p.name != "kustomization.yaml")


def pyproject_pin(package: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.match(rf"{package}(\[[^\]]*\])?==([\w.]+)$", dep)
        if match:
            return match.group(2)
    raise AssertionError(f"{package} not pinned in pyproject.toml")


# ---- schema validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_validates(path):
    resources = validate.load_manifests(path)
    assert resources, f"{path} holds no resources"
    assert validate.validate_all(resources) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_overlay_validates(overlay, rendered):
    resources = rendered[overlay]
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
            "PersistentVolumeClaim", "RayJob"} <= kinds
    assert validate.validate_all(resources) == []


def test_validator_cli_reports_overlays(capsys):
    assert validate.main([str(K8S / "overlays" / "prod"), str(K8S / "overlays" / "dev")]) == 0
    assert capsys.readouterr().out.count("OK") == 2


def _mutate(resource: dict, path: str, value=None, delete: bool = False) -> dict:
    resource = copy.deepcopy(resource)
    *parents, last = path.split(".")
    node = resource
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if delete:
        del node[int(last) if isinstance(node, list) else last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return resource


POD = "spec.rayClusterSpec.workerGroupSpecs.1.template.spec"
BROKEN = [
    # (resource, path, value or DELETE, what the error must say)
    ("Deployment/edufilter-service", "spec.replicas", "three", "is not of type 'integer'"),
    ("Deployment/edufilter-service", "spec.template.spec.containers.0.imagePullPolicyy", "Always",
     "'imagePullPolicyy' was unexpected"),
    ("Deployment/edufilter-service", "spec.template.spec.containers.0.name", "DELETE", "'name' is a required property"),
    ("Service/edufilter-service", "spec.ports.0.port", "8000", "is not of type 'integer'"),
    ("HorizontalPodAutoscaler/edufilter-service", "spec.scaleTargetRef", "DELETE", "'scaleTargetRef' is a required"),
    ("RayJob/edufilter-score", "spec.rayClusterSpec.workerGroupSpecs.0.replica", 3, "'replica' was unexpected"),
    ("RayJob/edufilter-score", "spec.rayClusterSpec.headGroupSpec", "DELETE", "'headGroupSpec' is a required"),
    ("RayJob/edufilter-score", "spec.rayClusterSpec.workerGroupSpecs.0.groupName", "DELETE", "'groupName' is a required"),
    ("RayJob/edufilter-score", "spec.shutdownAfterJobFinishes", "yes", "is not of type 'boolean'"),
    ("RayJob/edufilter-score", "spec.deletionPolicy", "DeleteEverything", "is not one of"),
    ("RayJob/edufilter-score", "spec.entrypointt", "edufilter score", "'entrypointt' was unexpected"),
    # Inside a RayJob's pod template the strict core schema applies.
    ("RayJob/edufilter-score", f"{POD}.containers.0.resources.limits", ["nvidia.com/gpu"], "is not of type 'object'"),
    ("RayJob/edufilter-score", f"{POD}.containers.0.volumeMount", [], "'volumeMount' was unexpected"),
    ("RayJob/edufilter-pretrain", "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0.ports.0.containerPort",
     "6379", "is not of type 'integer'"),
]


@pytest.mark.parametrize("target,path,value,message", BROKEN, ids=[f"{b[0]}:{b[1]}" for b in BROKEN])
def test_broken_manifest_fails_validation(rendered, target, path, value, message):
    kind, name = target.split("/")
    resource = by_key(rendered["overlays/prod"])[(kind, name)]
    assert validate.validate_resource(resource) == []
    broken = _mutate(resource, path, delete=True) if value == "DELETE" else _mutate(resource, path, value)
    errors = validate.validate_resource(broken)
    assert errors, f"{target} with {path}={value!r} passed validation"
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize("resource,message", [
    ({"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "x"}, "spec": {}}, "no schema"),
    ({"apiVersion": "apps/v1beta1", "kind": "Deployment", "metadata": {"name": "x"}}, "no schema"),
    ({"kind": "Deployment", "metadata": {"name": "x"}}, "not a Kubernetes object"),
])
def test_unknown_kinds_fail_instead_of_passing(resource, message):
    errors = validate.validate_resource(resource)
    assert errors and message in errors[0]


def test_broken_overlay_fails_validation(tmp_path, capsys):
    """A user overlay with a bad patch renders, and the rendered output fails validation (CLI exit 1)."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "overlays" / "prod", overlay)],
        "patches": [{"target": {"kind": "RayJob", "name": "edufilter-score"},
                     "patch": "- op: replace\n  path: /spec/rayClusterSpec/workerGroupSpecs/1/replicas\n  value: two\n"}],
    }))
    errors = validate.validate_all(kustomize.render(overlay))
    assert any("workerGroupSpecs.1.replicas: 'two' is not of type 'integer'" in e for e in errors), errors
    assert validate.main([str(overlay)]) == 1
    assert "ERROR" in capsys.readouterr().out


def test_renderer_rejects_unsupported_kustomize_features(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(kustomize.UnsupportedKustomization, match="namePrefix"):
        kustomize.render(tmp_path)


def _kustomize_binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        version = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True).stdout
        if re.search(r"Kustomize Version: v[5-9]", version):
            return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_matches_real_kustomize(overlay, rendered):
    """Where kustomize v5 (or kubectl with it) exists, the Python renderer must produce the same objects."""
    command = _kustomize_binary()
    if command is None:
        pytest.skip("no kustomize v5 / kubectl on PATH: the offline renderer is checked against it elsewhere")
    out = subprocess.run([*command, str(K8S / overlay)], capture_output=True, text=True, check=True).stdout
    real = [d for d in yaml.safe_load_all(out) if d]
    assert by_key(rendered[overlay]) == by_key(real)


# ---- the generated RayJob schema ----------------------------------------------------------------------

def test_vendored_schemas_are_small_and_say_where_they_come_from():
    files = list((K8S / "schemas").glob("*.json"))
    assert sum(f.stat().st_size for f in files) < 200_000
    schema = json.loads((K8S / "schemas" / "rayjob-ray-v1.json").read_text())
    assert "ray-project/kuberay" in schema["description"] and "generate.py" in schema["description"]
    pod_refs = json.dumps(schema).count("io.k8s.api.core.v1.PodTemplateSpec")
    assert pod_refs == 3  # head, worker groups, submitter: the strict core pod schema, referenced not copied


def test_schema_generator_follows_controller_gen_rules(tmp_path):
    (tmp_path / "raycluster_types.go").write_text('''package v1
// Top is documented.
type RayClusterSpec struct {
	// +optional
	Suspend *bool `json:"suspend,omitempty"`
	HeadGroupSpec HeadGroupSpec `json:"headGroupSpec"`
	// +kubebuilder:default:=0
	MinReplicas *int32 `json:"minReplicas"`
	Params map[string]string `json:"params"`
	Mode *UpscalingMode `json:"mode,omitempty"`
}
type HeadGroupSpec struct {
	Template corev1.PodTemplateSpec `json:"template"`
	metav1.TypeMeta `json:",inline"`
}
// +kubebuilder:validation:Enum=Default;Aggressive
type UpscalingMode string
func (r *RayClusterSpec) Ignored() {}
''')
    (tmp_path / "rayjob_types.go").write_text('''package v1
type RayJobSpec struct {
	RayClusterSpec *RayClusterSpec `json:"rayClusterSpec,omitempty"`
	// +kubebuilder:validation:XValidation:rule="self in ['A', 'B']",message="x"
	// +optional
	Policy *string `json:"policy,omitempty"`
	Workers []string `json:"workers,omitempty"`
}
''')
    generator = _load_tool(K8S / "schemas" / "generate.py")
    out = tmp_path / "schema.json"
    assert generator.main(["--types-dir", str(tmp_path), "--source", "test", "--output", str(out)]) == 0
    schema = json.loads(out.read_text())
    defs = schema["$defs"]
    assert defs["RayClusterSpec"]["required"] == ["headGroupSpec", "params"]  # optional, omitempty, defaulted are not
    assert defs["RayClusterSpec"]["additionalProperties"] is False
    assert defs["RayClusterSpec"]["properties"]["minReplicas"]["format"] == "int32"
    assert defs["UpscalingMode"]["enum"] == ["Default", "Aggressive"]
    assert defs["RayJobSpec"]["properties"]["policy"]["enum"] == ["A", "B"]
    assert defs["HeadGroupSpec"]["properties"] == {
        "template": {"$ref": "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.api.core.v1.PodTemplateSpec"}}
    assert defs["RayJobSpec"]["properties"]["workers"] == {"type": "array", "items": {"type": "string"}}


# ---- the deployment contract --------------------------------------------------------------------------

def all_containers(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            yield from all_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_containers(item)


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_versions_are_pinned_once_and_agree(overlay, rendered):
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    tags = {image["name"]: f"{image['newName']}:{image['newTag']}" for image in kustomization["images"]}
    for resource in rendered[overlay]:
        for container in all_containers(resource):
            assert container["image"] in tags.values(), f"{resource['kind']}/{resource['metadata']['name']}: " \
                f"image {container['image']} is not one the base pins"
    ray_version = next(lit.split("=", 1)[1] for gen in kustomization["configMapGenerator"]
                       if gen["name"] == "edufilter-versions" for lit in gen["literals"])
    import ray

    assert ray_version == pyproject_pin("ray") == ray.__version__
    rayjobs = [r for r in rendered[overlay] if r["kind"] == "RayJob"]
    assert sorted(r["metadata"]["name"] for r in rayjobs) == sorted(RAYJOBS)
    assert {r["spec"]["rayClusterSpec"]["rayVersion"] for r in rayjobs} == {ray_version}
    # Nothing else in k8s/ restates a version (the manifests carry placeholders only).
    for path in manifest_files():
        text = path.read_text()
        assert ray_version not in text and "ghcr.io" not in text, f"{path} restates a pinned version"


def pod_spec(resource: dict) -> dict:
    return resource["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_service_deployment_contract(overlay, rendered):
    objects = by_key(rendered[overlay])
    deployment = objects[("Deployment", "edufilter-service")]
    pod = pod_spec(deployment)
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # A read-only root needs a writable /tmp (uvicorn, Prometheus multiprocess dir, caches).
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    # Models: a read-only volume; every --model folder lives on it.
    assert mounts["/models"]["readOnly"] is True
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] in {
        name for kind, name in objects if kind == "PersistentVolumeClaim"}
    args = container["args"]
    assert args[0] == "serve"
    from service.cli import build_parser, parse_models

    parsed = build_parser().parse_args(args[1:])  # the real `edufilter serve` parser accepts them
    assert set(parse_models(parsed.model)) == {"web", "code", "stackoverflow"}
    models = [args[i + 1] for i, a in enumerate(args) if a == "--model"]
    assert {m.split("=")[0] for m in models} == {"web", "code", "stackoverflow"}
    assert all(m.split("=", 1)[1].startswith("/models/") for m in models)
    # API keys from a Secret; settings from the generated ConfigMap (EDUFILTER_* only, known to the service).
    env = {e["name"]: e for e in container["env"]}
    assert env["EDUFILTER_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "edufilter-api-keys", "key": "api-keys"}
    (source,) = container["envFrom"]
    config_map = objects[("ConfigMap", source["configMapRef"]["name"])]
    from service.settings import ServiceSettings

    for key in config_map["data"]:
        assert key.startswith("EDUFILTER_") and key[len("EDUFILTER_"):].lower() in ServiceSettings.model_fields, key
    assert config_map["data"]["EDUFILTER_PORT"] == str(ports["http"])
    assert config_map["data"]["EDUFILTER_HOST"] == "0.0.0.0"
    assert config_map["data"]["EDUFILTER_METRICS_OPEN"] == "true"  # Prometheus scrapes without a key
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["http"]) and annotations["prometheus.io/path"] == "/metrics"
    # Service, HPA and PDB point at these pods and this port.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "edufilter-service")]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http" and service["spec"]["ports"][0]["name"] == "http"
    hpa = objects[("HorizontalPodAutoscaler", "edufilter-service")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "edufilter-service"}
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = objects[("PodDisruptionBudget", "edufilter-service")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_dev_overlay_brings_its_own_secret_and_prod_expects_one(rendered):
    dev, prod = by_key(rendered["overlays/dev"]), by_key(rendered["overlays/prod"])
    assert ("Secret", "edufilter-api-keys") in dev
    assert ("Secret", "edufilter-api-keys") not in prod  # created by the operator (k8s/README.md)
    assert "create secret generic edufilter-api-keys" in (K8S / "README.md").read_text()


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_readme_apply_steps_cover_every_resource(overlay, rendered):
    """k8s/README.md applies the overlay by component label, step by step: every object needs one."""
    readme = (K8S / "README.md").read_text()
    steps = {"storage", "service", "score", "select", "pretrain"}
    for step in sorted(steps):
        assert f"-l app.kubernetes.io/component={step}" in readme
    for resource in rendered[overlay]:
        component = resource["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        assert component in steps, f"{resource['kind']}/{resource['metadata']['name']} has no applied component label"


def worker_groups(rayjob: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"].get("workerGroupSpecs", [])}


def gpus(group: dict) -> int:
    container = group["template"]["spec"]["containers"][0]
    return int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))


def test_rayjob_topology(rendered):
    prod = by_key(rendered["overlays/prod"])
    score = prod[("RayJob", "edufilter-score")]
    groups = worker_groups(score)
    assert set(groups) == {"cpu", "gpu"} and gpus(groups["cpu"]) == 0 and gpus(groups["gpu"]) >= 1
    gpu_container = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu_container["resources"]["requests"]["nvidia.com/gpu"] == gpu_container["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu_container["image"].endswith("-gpu")
    select = prod[("RayJob", "edufilter-select")]
    assert "nvidia.com/gpu" not in json.dumps(select)
    pretrain = prod[("RayJob", "edufilter-pretrain")]
    (group,) = worker_groups(pretrain).values()
    assert gpus(group) >= 1 and "--use-gpu" in pretrain["spec"]["entrypoint"]
    env = yaml.safe_load(pretrain["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["EDUFILTER_USE_GPU"] and int(env["EDUFILTER_NUM_WORKERS"]) <= gpus(group) * group["replicas"]
    # dev has no GPU anywhere.
    assert "nvidia.com/gpu" not in json.dumps(rendered["overlays/dev"])
    # Every Ray pod mounts the data volume, every volume's claim exists, and /dev/shm is memory-backed.
    for overlay in ("overlays/dev", "overlays/prod"):
        objects = by_key(rendered[overlay])
        claims = {name for kind, name in objects if kind == "PersistentVolumeClaim"}
        for name in RAYJOBS:
            spec = objects[("RayJob", name)]["spec"]
            assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
            cluster = spec["rayClusterSpec"]
            for pod in [cluster["headGroupSpec"]["template"]["spec"]] + [
                    g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])]:
                volumes = {v["name"]: v for v in pod["volumes"]}
                for volume in volumes.values():
                    if "persistentVolumeClaim" in volume:
                        assert volume["persistentVolumeClaim"]["claimName"] in claims
                assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
                mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
                assert {"/data", "/dev/shm"} <= mounts
                assert pod["securityContext"]["runAsNonRoot"] is True
                assert pod["containers"][0]["resources"]["limits"]["memory"]


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_one_image_per_ray_cluster(overlay, rendered):
    """Ray refuses nodes whose Ray or Python version (to the patch level) differs from the head's, and the
    CPU and CUDA images have different Pythons: every pod of a RayJob must run the same image, and a
    RayJob that requests GPUs must run the CUDA one."""
    for rayjob in (r for r in rendered[overlay] if r["kind"] == "RayJob"):
        (image,) = {c["image"] for c in all_containers(rayjob)}
        assert image.endswith("-gpu") == ("nvidia.com/gpu" in json.dumps(rayjob)), (rayjob["metadata"]["name"], image)


def pod_specs(resource: dict):
    """Every pod spec in a rendered object: a workload's template, a RayJob's head, workers and submitter."""
    if resource["kind"] == "Deployment":
        yield resource["spec"]["template"]["spec"]
    elif resource["kind"] == "RayJob":
        spec = resource["spec"]
        yield spec["submitterPodTemplate"]["spec"]
        yield spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        for group in spec["rayClusterSpec"].get("workerGroupSpecs", []):
            yield group["template"]["spec"]


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_every_pod_meets_the_restricted_pod_security_standard(overlay, rendered):
    pods = [(r["metadata"]["name"], pod) for r in rendered[overlay] for pod in pod_specs(r)]
    assert len(pods) >= 8
    for name, pod in pods:
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context.get("runAsUser", 1000) != 0, name
        assert context["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        assert not any("hostPath" in v for v in pod.get("volumes", [])), name
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert "privileged" not in container["securityContext"], name
            assert container["resources"]["limits"]["memory"], f"{name}: no memory limit"


def test_gpu_groups_show_where_to_fill_tolerations_and_node_selectors():
    for name in ("rayjob-score.yaml", "rayjob-pretrain.yaml"):
        text = (K8S / "base" / "jobs" / name).read_text()
        assert "# tolerations:" in text and "#   - key: nvidia.com/gpu" in text and "# nodeSelector:" in text


ENTRYPOINT_MODULES = {"score": "jobs.score", "select": "jobs.select", "pretrain": "jobs.pretrain.cli"}


@pytest.mark.parametrize("name", RAYJOBS)
def test_entrypoint_is_the_cli_and_its_flags_parse(name, rendered):
    """The entrypoint runs an `edufilter` subcommand whose real parser accepts every flag, with every
    variable it uses defined in runtimeEnvYAML (a renamed flag or env var fails here, not in the cluster)."""
    entrypoints = {r["spec"]["entrypoint"] for o in ("overlays/dev", "overlays/prod")
                   for r in rendered[o] if r["kind"] == "RayJob" and r["metadata"]["name"] == name}
    assert len(entrypoints) == 1, "overlays must not change the entrypoint"
    entrypoint = entrypoints.pop()
    outer = shlex.split(entrypoint)  # what KubeRay's submitter shell passes to `ray job submit --`
    assert outer[:2] == ["bash", "-c"] and len(outer) == 3, outer
    for overlay in ("overlays/dev", "overlays/prod"):
        rayjob = by_key(rendered[overlay])[("RayJob", name)]
        runtime_env_yaml = rayjob["spec"]["runtimeEnvYAML"]
        # KubeRay passes the runtime env in double quotes to bash: `$` or backticks would be expanded there.
        assert "$" not in runtime_env_yaml and "`" not in runtime_env_yaml
        env = {k: str(v) for k, v in yaml.safe_load(runtime_env_yaml)["env_vars"].items()}
        used = set(re.findall(r"\$\{?(\w+)", outer[2])) - {"RAY_ADDRESS"}
        assert used <= set(env), f"{overlay} {name}: {sorted(used - set(env))} not defined in runtimeEnvYAML"
        expanded = subprocess.run(["bash", "-c", "printf '%s\\0' " + outer[2].removeprefix("exec ")],
                                  env={**env, "RAY_ADDRESS": "127.0.0.1:6379", "PATH": os.environ["PATH"]},
                                  capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
        assert expanded[0] == "edufilter"
        from edufilter.cli import COMMANDS

        assert expanded[1] in COMMANDS and COMMANDS[expanded[1]][0].startswith(ENTRYPOINT_MODULES[expanded[1]])
        parser = importlib.import_module(ENTRYPOINT_MODULES[expanded[1]]).build_parser()
        parser.parse_args(expanded[2:])  # SystemExit (a failure) on an unknown or malformed flag


def test_readme_sizing_table_is_generated_from_the_measured_results(tmp_path):
    sizing = _load_tool(K8S / "tools" / "sizing.py")
    readme = (K8S / "README.md").read_text()
    assert sizing.table() in readme, "run `python k8s/tools/sizing.py --write` after new benchmark results"
    assert "**measured** on CPU" in readme and "**estimate**" in readme
    # A GPU measurement, when one is recorded, becomes a measured row of its own.
    shutil.copy(REPO / "bench" / "results" / "score.json", tmp_path / "score.json")
    (tmp_path / "score_gpu.json").write_text(json.dumps({"mode": "embedding", "pipeline": {"docs_per_s": 5000.0}}))
    (tmp_path / "classifier.json").write_text(json.dumps(
        {"speed": {"embedding": {"docs_per_s": 20.0, "torch_threads": 2, "max_chunks": 8}}}))
    table = sizing.table(tmp_path)
    assert "| embedding (H200) | 5,000 docs/s per GPU | **measured** on a GPU" in table
    assert "| embedding (CPU) | 10.0 docs/s per core" in table and "| 1,120 cores |" in table


def test_readme_paths_exist():
    text = (K8S / "README.md").read_text()
    written_later = {"bench/results/score_gpu.json"}  # the GPU benchmark's output, once someone runs it on a GPU
    for path in set(re.findall(r"\b((?:k8s|docker|bench)/[\w./-]+\w)", text)) - written_later:
        assert (REPO / path).exists(), f"k8s/README.md names {path}, which does not exist"


# ---- the entrypoints on a real local Ray cluster ------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_cluster_processes(temp_dir: str) -> None:
    """Terminate, by pid, every process of *this* cluster (their command lines name its temp dir)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if temp_dir in cmdline:
                pids.append(int(proc.name))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not pids:
            return
        time.sleep(1)


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head` on loopback with its own ports and temp dir; stopped by pid (never `ray stop`,
    which would also stop other Ray instances on the machine)."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "ray").exists() or not shutil.which("edufilter", path=str(bin_dir)):
        pytest.skip("the `ray` and `edufilter` commands must be installed in the test virtualenv (make install-dev)")
    temp_dir = tempfile.mkdtemp(prefix="efk8s-", dir="/tmp")  # short: Ray's unix sockets live under it
    gcs_port, dashboard_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # RAY_AUTH_MODE=disabled: what a KubeRay pod gets (Ray enables token auth at `ray start` only when a
    # token file exists, and pods have none); a developer's ~/.ray/auth_token must not change that here.
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    command = [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
               f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
               f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp_dir}", "--num-cpus=2", "--num-gpus=0",
               "--object-store-memory=300000000", "--include-dashboard=true", "--disable-usage-stats"]
    log = open(Path(temp_dir) / "ray-start.log", "w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{dashboard_port}"
    try:
        # Talk to it only through the `ray` CLI in subprocesses with `env`: this pytest process may hold
        # another Ray's settings (the session's `ray_local`).
        deadline = time.time() + 120
        while subprocess.run([str(bin_dir / "ray"), "job", "list", "--address", f"http://{address}"], env=env,
                             capture_output=True).returncode != 0:
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited: {(Path(temp_dir) / 'ray-start.log').read_text()[-3000:]}")
            if time.time() > deadline:
                raise RuntimeError("the local Ray cluster's job server did not come up in 120 s")
            time.sleep(1)
        yield {"address": address, "env": env, "ray": str(bin_dir / "ray")}
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=2)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        _kill_cluster_processes(temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def kuberay_submitter_command(rayjob: dict, dashboard_address: str, submission_id: str) -> str:
    """The shell command KubeRay's submitter Job runs for a RayJob in K8sJobMode, built the way
    ray-operator/controllers/ray/common/job.go GetK8sJobCommand builds it (then `/bin/bash -c` it)."""
    spec = rayjob["spec"]
    address = f"http://{dashboard_address}"
    command = ["if", "ray", "job", "status", "--address", address, submission_id, ">/dev/null", "2>&1", ";",
               "then", "ray", "job", "logs", "--address", address, "--follow", submission_id, ";",
               "else", "ray", "job", "submit", "--address", address]
    if spec.get("runtimeEnvYAML"):
        runtime_env = json.dumps(yaml.safe_load(spec["runtimeEnvYAML"]), separators=(",", ":"))
        command += ["--runtime-env-json", json.dumps(runtime_env)]  # Go's strconv.Quote, for ASCII text
    assert not any(k in spec for k in ("metadata", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources")), \
        "extend kuberay_submitter_command for these fields"
    command += ["--submission-id", submission_id, "--", spec["entrypoint"].strip(), ";", "fi"]
    return " ".join(command)


def run_rayjob(cluster: dict, rayjob: dict, env_vars: dict[str, str], tmp_path: Path) -> str:
    """Submit the RayJob's unchanged entrypoint with its runtimeEnvYAML's variables pointed at test data."""
    rayjob = copy.deepcopy(rayjob)
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    manifest_keys = set(runtime_env["env_vars"]) - {"HF_HUB_OFFLINE"}
    assert set(env_vars) == manifest_keys, "the test must set exactly the variables the RayJob defines"
    runtime_env["env_vars"].update(env_vars)
    rayjob["spec"]["runtimeEnvYAML"] = yaml.safe_dump(runtime_env)
    submission_id = f"{rayjob['metadata']['name']}-{int(time.time() * 1000)}"
    script = kuberay_submitter_command(rayjob, cluster["address"], submission_id)
    result = subprocess.run(["/bin/bash", "-c", script], env=cluster["env"], capture_output=True, text=True,
                            timeout=420, cwd=tmp_path)
    # Like KubeRay's submitter Job: `ray job submit` follows the job's logs and exits 1 if it failed.
    output = result.stdout + result.stderr
    (tmp_path / f"{rayjob['metadata']['name']}.log").write_text(output)  # kept for debugging
    assert result.returncode == 0 and f"Job '{submission_id}' succeeded" in output, output[-8000:]
    return output


@pytest.fixture(scope="module")
def prod_rayjobs() -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in kustomize.render(K8S / "overlays" / "prod") if r["kind"] == "RayJob"}


@pytest.fixture(scope="module")
def scored(ray_cluster, prod_rayjobs, tmp_path_factory):
    from test_jobs_data import refinedweb_shard, train_model

    tmp = tmp_path_factory.mktemp("k8s-score")
    model = train_model(tmp)
    for i in range(2):
        refinedweb_shard(tmp / "refinedweb" / f"part-{i}.parquet", 40, 100 + i)
    output = tmp / "scored"
    logs = run_rayjob(ray_cluster, prod_rayjobs["edufilter-score"], {
        "EDUFILTER_MODEL": str(model), "EDUFILTER_SOURCE": "refinedweb",
        "EDUFILTER_INPUT": str(tmp / "refinedweb" / "*.parquet"), "EDUFILTER_OUTPUT": str(output),
        "EDUFILTER_NUM_GPUS": "0", "EDUFILTER_BATCH_SIZE": "32"}, tmp)
    return {"output": output, "logs": logs, "tmp": tmp}


@pytest.mark.ray
@pytest.mark.slow
def test_score_rayjob_entrypoint_runs(scored):
    import pyarrow.parquet as pq

    summary = json.loads((scored["output"] / "_summary.json").read_text())
    shards = sorted(scored["output"].glob("*.parquet"))
    assert len(shards) == 2
    table = pq.read_table(shards)
    assert table.num_rows == 80
    scores = table.column("score").to_pylist()
    assert all(0.0 <= s <= 5.0 for s in scores) and len(set(scores)) > 1
    assert "joining Ray cluster" in scored["logs"]  # it ran on the cluster, not an embedded Ray
    assert json.dumps(summary)  # written atomically at the end


@pytest.fixture(scope="module")
def corpus(ray_cluster, prod_rayjobs, scored):
    output = scored["tmp"] / "corpus"
    run_rayjob(ray_cluster, prod_rayjobs["edufilter-select"], {
        "EDUFILTER_SCORED": str(scored["output"]), "EDUFILTER_CORPUS": str(output), "EDUFILTER_THRESHOLD": "2.5"},
        scored["tmp"])
    return output


@pytest.mark.ray
@pytest.mark.slow
def test_select_rayjob_entrypoint_runs(corpus):
    import pyarrow.parquet as pq

    assert (corpus / "manifest.json").is_file()
    table = pq.read_table(sorted(corpus.glob("**/*.parquet")))
    assert 0 < table.num_rows < 80
    assert min(table.column("score").to_pylist()) >= 2.5


@pytest.mark.ray
@pytest.mark.slow
def test_pretrain_rayjob_entrypoint_runs(ray_cluster, prod_rayjobs, corpus):
    output = corpus.parent / "pretrain"
    logs = run_rayjob(ray_cluster, prod_rayjobs["edufilter-pretrain"], {
        "EDUFILTER_CORPUS": str(corpus), "EDUFILTER_PRESET": "tiny", "EDUFILTER_CHECKPOINTS": str(output),
        "EDUFILTER_STEPS": "2", "EDUFILTER_NUM_WORKERS": "1", "EDUFILTER_USE_GPU": ""}, corpus.parent)
    assert (output / "model" / "config.json").is_file(), logs[-3000:]
    steps = [json.loads(line).get("step") for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 2
    assert (output / "ray").is_dir()  # Ray Train ran (its storage path), not the in-process trainer
