"""A small kustomize-compatible renderer: exactly the kustomize features k8s/ uses, nothing more.

Why it exists: the test suite must render the overlays offline on machines without the `kustomize`
or `kubectl` binaries (neither is installable from PyPI; Debian's kubernetes-client ships kustomize
v2, which predates `labels`, `replacements` and inline `patches`). Where a real `kubectl`/`kustomize`
is on PATH, tests/test_k8s.py renders with it too and requires identical output, so this file cannot
silently drift from kustomize's behaviour.

Supported (kustomize v5 semantics): resources (files and kustomization folders), namespace,
labels (pairs, includeSelectors: false), images (name, newName, newTag, digest; applied to every
`containers`/`initContainers` list at any depth, CRDs included), configMapGenerator and secretGenerator
(literals; options disableNameSuffixHash, labels, annotations; kustomize's content-hash suffix and
the name references to generated objects from pod specs of built-in workload kinds), replacements
(source fieldPath -> target fieldPaths, dotted, numeric list indices), patches (inline or file JSON6902, target by kind/name regex),
and the `config.kubernetes.io/local-config` annotation. Anything else raises UnsupportedKustomization.

    python k8s/tools/kustomize.py k8s/overlays/prod     # prints the rendered YAML stream
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
LOCAL_CONFIG = "config.kubernetes.io/local-config"
SUPPORTED_KEYS = {
    "apiVersion", "kind", "resources", "namespace", "labels", "images", "configMapGenerator",
    "secretGenerator", "replacements", "patches",
}
# Built-in kinds whose pod template kustomize's nameReference transformer rewrites (the ones used here).
POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "Pod": ("spec",),
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}

Resource = dict[str, Any]


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement."""


def render(path: str | Path) -> list[Resource]:
    """Render the kustomization in folder `path` into a list of resources (kustomize build)."""
    resources = _build(Path(path))
    return [r for r in resources if (r.get("metadata", {}).get("annotations") or {}).get(LOCAL_CONFIG) != "true"]


def dump(resources: list[Resource]) -> str:
    return yaml.safe_dump_all(resources, sort_keys=True, default_flow_style=False)


def _kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no kustomization.yaml in {folder}")


def _build(folder: Path) -> list[Resource]:
    kfile = _kustomization_file(folder)
    kust = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unknown = set(kust) - SUPPORTED_KEYS
    if unknown:
        raise UnsupportedKustomization(f"{kfile}: unsupported field(s) {sorted(unknown)}")

    resources: list[Resource] = []
    for entry in kust.get("resources", []):
        target = folder / entry
        if target.is_dir():
            resources.extend(_build(target))
        elif target.is_file():
            resources.extend(d for d in yaml.safe_load_all(target.read_text(encoding="utf-8")) if d)
        else:
            raise FileNotFoundError(f"{kfile}: resource {entry!r} not found")

    generated: dict[tuple[str, str], str] = {}  # (kind, original name) -> name with hash suffix
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in kust.get(key, []):
            resource, original = _generate(kind, spec, kfile)
            resources.append(resource)
            generated[(kind, original)] = resource["metadata"]["name"]

    # Transformers in kustomize's own order: patches, namespace, labels, images, replacements.
    for patch in kust.get("patches", []):
        _apply_patch(resources, patch, folder, kfile)
    if "namespace" in kust:
        for r in resources:
            if r.get("kind") not in CLUSTER_SCOPED:
                r.setdefault("metadata", {})["namespace"] = kust["namespace"]
    for entry in kust.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise UnsupportedKustomization(f"{kfile}: labels with includeSelectors/includeTemplates")
        for r in resources:
            r.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for image in kust.get("images", []):
        for r in resources:
            _set_images(r, image)
    for replacement in kust.get("replacements", []):
        _replace(resources, replacement, kfile)
    for r in resources:
        _rename_references(r, generated)
    return resources


# ---- generators -----------------------------------------------------------------------------------------

def _generate(kind: str, spec: dict, kfile: Path) -> tuple[Resource, str]:
    unknown = set(spec) - {"name", "literals", "options", "type"}
    if unknown:
        raise UnsupportedKustomization(f"{kfile}: {kind} generator field(s) {sorted(unknown)}")
    data: dict[str, str] = {}
    for literal in spec.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise ValueError(f"{kfile}: generator literal {literal!r} is not KEY=VALUE")
        data[key] = value
    options = spec.get("options", {})
    name = spec["name"]
    resource: Resource = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
    if options.get("labels"):
        resource["metadata"]["labels"] = dict(options["labels"])
    if options.get("annotations"):
        resource["metadata"]["annotations"] = dict(options["annotations"])
    if kind == "Secret":
        resource["type"] = spec.get("type", "Opaque")
        resource["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        resource["data"] = data
    if not options.get("disableNameSuffixHash"):
        resource["metadata"]["name"] = f"{name}-{_content_hash(resource)}"
    return resource, name


def _go_json(value: Any) -> str:
    """encoding/json.Marshal's output: sorted keys, no spaces, HTML characters escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _content_hash(resource: Resource) -> str:
    """kustomize's generator name suffix (api/hasher): sha256 of a canonical encoding, 10 chars, no vowels."""
    if resource["kind"] == "ConfigMap":
        encoded = {"kind": "ConfigMap", "name": "", "data": resource["data"]}
    else:
        encoded = {"kind": "Secret", "type": resource["type"], "name": "", "data": resource["data"]}
    digest = hashlib.sha256(_go_json(encoded).encode("utf-8")).hexdigest()
    return digest[:10].translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _rename_references(resource: Resource, generated: dict[tuple[str, str], str]) -> None:
    path = POD_TEMPLATE_PATHS.get(resource.get("kind", ""))
    if not generated or path is None:
        return
    pod = resource
    for key in path:
        pod = pod.get(key) or {}

    def rename(ref: dict | None, kind: str, key: str = "name") -> None:
        if ref and (kind, ref.get(key)) in generated:
            ref[key] = generated[(kind, ref[key])]

    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for source in container.get("envFrom", []):
            rename(source.get("configMapRef"), "ConfigMap")
            rename(source.get("secretRef"), "Secret")
        for env in container.get("env", []):
            value_from = env.get("valueFrom") or {}
            rename(value_from.get("configMapKeyRef"), "ConfigMap")
            rename(value_from.get("secretKeyRef"), "Secret")
    for volume in pod.get("volumes", []):
        rename(volume.get("configMap"), "ConfigMap")
        rename(volume.get("secret"), "Secret", "secretName")
        for source in (volume.get("projected") or {}).get("sources", []):
            rename(source.get("configMap"), "ConfigMap")
            rename(source.get("secret"), "Secret")


# ---- images ---------------------------------------------------------------------------------------------

def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def _set_images(node: Any, image: dict) -> None:
    if isinstance(node, list):
        for item in node:
            _set_images(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                current = container.get("image") if isinstance(container, dict) else None
                if current and _image_name(current) == image["name"]:
                    new = image.get("newName", image["name"])
                    if "digest" in image:
                        new += "@" + image["digest"]
                    elif "newTag" in image:
                        new += ":" + str(image["newTag"])
                    elif "@" in current or ":" in current.rsplit("/", 1)[-1]:
                        new += current[len(_image_name(current)):]
                    container["image"] = new
        _set_images(value, image)


# ---- patches and replacements ---------------------------------------------------------------------------

def _matches(resource: Resource, selector: dict, regex: bool = False) -> bool:
    """Patch targets take regular expressions (matched against the whole value), like kustomize's;
    replacement sources and targets match names exactly."""
    unknown = set(selector) - {"kind", "name", "group", "version"}
    if unknown:
        raise UnsupportedKustomization(f"target selector field(s) {sorted(unknown)}")
    for field, value in (("kind", resource.get("kind", "")), ("name", resource.get("metadata", {}).get("name", ""))):
        if field in selector and not (re.fullmatch(selector[field], value) if regex else selector[field] == value):
            return False
    return True


def _apply_patch(resources: list[Resource], patch: dict, folder: Path, kfile: Path) -> None:
    if "target" not in patch:
        raise UnsupportedKustomization(f"{kfile}: patches without a target (strategic merge) are not supported")
    text = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text(encoding="utf-8")
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise UnsupportedKustomization(f"{kfile}: only JSON6902 patches (a list of operations) are supported")
    targets = [r for r in resources if _matches(r, patch["target"], regex=True)]
    if not targets:
        raise ValueError(f"{kfile}: patch target {patch['target']} matches no resource")
    for resource in targets:
        for op in operations:
            _json_patch(resource, op)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: Resource, op: dict) -> None:
    *parents, last = _pointer(op["path"])
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            node[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[index]
        else:
            raise UnsupportedKustomization(f"JSON6902 op {kind!r}")
        return
    if kind in ("add", "replace"):
        if kind == "replace" and last not in node:
            raise ValueError(f"replace: path {op['path']} does not exist")
        node[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[last]
    else:
        raise UnsupportedKustomization(f"JSON6902 op {kind!r}")


def _step(node: Any, part: str) -> Any:
    """One step of a kustomize fieldPath: a map key, or a list index."""
    if isinstance(node, list):
        if not part.isdigit():
            raise UnsupportedKustomization(f"fieldPath list step {part!r} (only numeric indices are supported)")
        return node[int(part)]
    return node[part]


def _get_field(resource: Resource, dotted: str) -> Any:
    node: Any = resource
    for part in dotted.split("."):
        node = _step(node, part)
    return node


def _replace(resources: list[Resource], replacement: dict, kfile: Path) -> None:
    source = replacement["source"]
    sources = [r for r in resources if _matches(r, {k: v for k, v in source.items() if k in ("kind", "name")})]
    if len(sources) != 1:
        raise ValueError(f"{kfile}: replacement source {source} matches {len(sources)} resources")
    value = _get_field(sources[0], source.get("fieldPath", "metadata.name"))
    for target in replacement["targets"]:
        for resource in resources:
            if not _matches(resource, target["select"]):
                continue
            for dotted in target["fieldPaths"]:
                *parents, last = dotted.split(".")
                node = resource
                for part in parents:
                    node = _step(node, part)
                if isinstance(node, list):
                    node[int(last)] = copy.deepcopy(value)
                elif last in node:
                    node[last] = copy.deepcopy(value)
                else:
                    raise ValueError(f"{kfile}: replacement target {dotted} missing in {resource['kind']}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: kustomize.py KUSTOMIZATION_DIR")
    sys.stdout.write(dump(render(sys.argv[1])))
