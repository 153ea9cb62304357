"""Validate Kubernetes manifests offline against the Kubernetes OpenAPI schemas and KubeRay's RayJob schema.

- Built-in kinds: the strict JSON schemas (unknown fields rejected) shipped in the PyPI package
  `kubernetes-validate`, for Kubernetes `K8S_VERSION`.
- RayJob (ray.io/v1): k8s/schemas/rayjob-ray-v1.json (made by k8s/schemas/generate.py from KubeRay's API
  types); its pod templates, services and env vars refer to the same strict Kubernetes definitions.
- A kind with no schema is an error, never a silent pass.

    python k8s/tools/validate.py k8s/overlays/prod k8s/overlays/dev    # kustomization folders
    python k8s/tools/validate.py k8s/base/service/deployment.yaml      # plain manifest files
"""

from __future__ import annotations

import functools
import json
import re
import sys
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml
from referencing import Registry, Resource

K8S_VERSION = "1.31"  # oldest Kubernetes these manifests target (autoscaling/v2, policy/v1 are GA well before)
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
CUSTOM_SCHEMAS = {("ray.io/v1", "RayJob"): SCHEMAS / "rayjob-ray-v1.json"}


class NoSchemaError(LookupError):
    """No schema is known for a resource's apiVersion/kind."""


def _schema_dir(version: str) -> Path:
    root = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = Path(str(root)) / f"v{version}.0-local-strict"
    if not folder.is_dir():
        raise NoSchemaError(f"kubernetes-validate has no strict schemas for Kubernetes {version}")
    return folder


@functools.lru_cache(maxsize=4)
def _registry(version: str) -> Registry:
    definitions = json.loads((_schema_dir(version) / "_definitions.json").read_text(encoding="utf-8"))
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    for path in CUSTOM_SCHEMAS.values():
        schema = json.loads(path.read_text(encoding="utf-8"))
        registry = registry.with_resource(schema["$id"], Resource.from_contents(schema))
    return registry


@functools.lru_cache(maxsize=64)
def _validator(api_version: str, kind: str, version: str) -> jsonschema.Validator:
    if (api_version, kind) in CUSTOM_SCHEMAS:
        schema = json.loads(CUSTOM_SCHEMAS[(api_version, kind)].read_text(encoding="utf-8"))
    else:
        # kubernetes-validate's file naming: <kind>-<group prefix>-<version>.json, e.g.
        # deployment-apps-v1.json, horizontalpodautoscaler-autoscaling-v2.json, service-v1.json.
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        path = _schema_dir(version) / f"{kind.lower()}-{group_version}.json"
        if not path.is_file():
            raise NoSchemaError(f"no schema for {api_version} {kind} (Kubernetes {version})")
        schema = json.loads(path.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema, registry=_registry(version))


def describe(resource: dict[str, Any]) -> str:
    meta = resource.get("metadata") or {}
    return f"{resource.get('kind', '?')}/{meta.get('name', '?')}"


def validate_resource(resource: dict[str, Any], version: str = K8S_VERSION) -> list[str]:
    """Every schema violation of one resource, as 'Kind/name: path: message' lines (empty when valid)."""
    if not isinstance(resource, dict) or "apiVersion" not in resource or "kind" not in resource:
        return [f"{describe(resource) if isinstance(resource, dict) else resource!r}: not a Kubernetes object "
                "(apiVersion and kind are required)"]
    try:
        validator = _validator(resource["apiVersion"], resource["kind"], version)
    except NoSchemaError as exc:
        return [f"{describe(resource)}: {exc}"]
    errors = sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{describe(resource)}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {_message(e)}" for e in errors]


def _message(error: jsonschema.ValidationError) -> str:
    # oneOf/anyOf errors hide the useful part in their context: report the deepest one.
    if error.context:
        deepest = max(error.context, key=lambda e: len(e.absolute_path))
        return f"{error.message} ({'.'.join(map(str, deepest.absolute_path))}: {deepest.message})"
    return error.message


def validate_all(resources: Iterable[dict[str, Any]], version: str = K8S_VERSION) -> list[str]:
    return [line for resource in resources for line in validate_resource(resource, version)]


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    """A kustomization folder (rendered with k8s/tools/kustomize.py) or a YAML file (all its documents)."""
    path = Path(path)
    if path.is_dir():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            import kustomize
        finally:
            sys.path.pop(0)
        return kustomize.render(path)
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="validate.py", description="Validate manifests offline (see module doc).")
    parser.add_argument("paths", nargs="+", help="kustomization folders or YAML manifest files")
    parser.add_argument("--kubernetes-version", default=K8S_VERSION, help=f"schema version (default {K8S_VERSION})")
    args = parser.parse_args(argv)
    failed = False
    for path in args.paths:
        resources = load_manifests(path)
        errors = validate_all(resources, args.kubernetes_version)
        for line in errors:
            print(f"ERROR {path}: {line}")
        if not errors:
            print(f"OK    {path}: {len(resources)} resources valid against Kubernetes {args.kubernetes_version}")
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
