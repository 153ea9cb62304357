"""Generate k8s/schemas/rayjob-ray-v1.json, the JSON schema tests/test_k8s.py validates RayJobs with.

KubeRay's published CRD (ray.io_rayjobs.yaml) is 1.1 MB because it inlines the whole Kubernetes
PodTemplateSpec schema three times. This script derives the same RayJob schema from KubeRay's Go API
types instead, the source controller-gen builds the CRD from, and *refers* to the core Kubernetes
types (PodTemplateSpec, Service, EnvVar, ...) in the schemas that the `kubernetes-validate` package
ships, so the vendored file stays a few kilobytes and every embedded pod template is checked by the
real, strict Kubernetes schema.

Usage (from a KubeRay checkout at the version you deploy, or any folder holding the two files):

    python k8s/schemas/generate.py --types-dir kuberay/ray-operator/apis/ray/v1 \
        --source "ray-project/kuberay@<commit or tag>"

It follows controller-gen's rules for what it reads:
  - a field's JSON name, and `omitempty`, come from its `json:"..."` tag; `,inline` embeds are skipped;
  - a field is required unless it has `omitempty`, a `+optional` marker or a `+kubebuilder:default`
    (the API server fills defaulted fields before validating, so they are never missing there);
  - `+kubebuilder:validation:Enum=a;b` (on the field or its named string type) becomes an enum, and
    a CEL rule of the form `self in ['a', 'b']` becomes the same enum (the only CEL form KubeRay uses
    on the fields below besides immutability, which needs the old object and is not checked here);
  - objects are closed (`additionalProperties: false`): the API server prunes unknown fields and
    `kubectl apply` (strict field validation) rejects them, so an unknown field is a typo to report.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"  # $id of kubernetes-validate's _definitions.json
INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
INT64 = {"type": "integer", "format": "int64"}

# Go types from the Kubernetes API packages -> their schema in kubernetes-validate's definitions.
CORE_TYPES = {
    "corev1.PodTemplateSpec": "io.k8s.api.core.v1.PodTemplateSpec",
    "corev1.Service": "io.k8s.api.core.v1.Service",
    "corev1.ResourceRequirements": "io.k8s.api.core.v1.ResourceRequirements",
    "corev1.SecurityContext": "io.k8s.api.core.v1.SecurityContext",
    "corev1.EnvVar": "io.k8s.api.core.v1.EnvVar",
    "corev1.EnvVarSource": "io.k8s.api.core.v1.EnvVarSource",
    "corev1.EnvFromSource": "io.k8s.api.core.v1.EnvFromSource",
    "corev1.VolumeMount": "io.k8s.api.core.v1.VolumeMount",
    "metav1.ObjectMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
}
# Kubernetes string types (type X string in k8s.io/api) that have no definition of their own.
CORE_STRINGS = {
    "corev1.ServiceType": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
    "corev1.PullPolicy": ["Always", "Never", "IfNotPresent"],
}
SCALARS = {
    "string": {"type": "string"},
    "bool": {"type": "boolean"},
    "int32": INT32,
    "int64": INT64,
    "int": {"type": "integer"},
    "float32": {"type": "number"},
    "float64": {"type": "number"},
}

TYPE_DECL = re.compile(r"^type\s+(\w+)\s+(struct\s*\{|[\w.\[\]*]+)\s*$")
FIELD = re.compile(r"^(\w+)\s+([\w.\[\]*]+)\s+`([^`]*)`")
EMBED = re.compile(r"^([\w.*]+)\s+`([^`]*)`")
JSON_TAG = re.compile(r'json:"([^"]*)"')
CEL_IN = re.compile(r"rule=\"self in \[([^\]]*)\]\"")


@dataclass
class GoField:
    go_name: str
    go_type: str
    json_name: str
    omitempty: bool
    markers: list[str]
    doc: list[str]


@dataclass
class GoType:
    name: str
    underlying: str | None  # "struct" or a Go type expression
    markers: list[str]
    doc: list[str]
    fields: list[GoField] = field(default_factory=list)


def parse_go_types(sources: list[str]) -> dict[str, GoType]:
    """Every top-level `type X ...` declaration with its comment markers (funcs, consts, vars skipped)."""
    types: dict[str, GoType] = {}
    for text in sources:
        comments: list[str] = []
        current: GoType | None = None
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("//"):
                comments.append(line.lstrip("/").strip())
                continue
            if current is not None:  # inside a struct body
                if line.startswith("}"):
                    types[current.name] = current
                    current, comments = None, []
                    continue
                match = FIELD.match(line) or EMBED.match(line)
                if match:
                    if len(match.groups()) == 3:
                        go_name, go_type, tags = match.groups()
                    else:
                        go_type, tags = match.groups()
                        go_name = go_type.split(".")[-1]
                    tag = JSON_TAG.search(tags)
                    parts = tag.group(1).split(",") if tag else [go_name]
                    if "inline" not in parts[1:] and parts[0] != "-":
                        current.fields.append(GoField(
                            go_name=go_name, go_type=go_type, json_name=parts[0] or go_name,
                            omitempty="omitempty" in parts[1:],
                            markers=[c for c in comments if c.startswith("+")],
                            doc=[c for c in comments if c and not c.startswith("+")],
                        ))
                comments = [] if line else comments
                continue
            match = TYPE_DECL.match(line)
            if match:
                name, rest = match.groups()
                markers = [c for c in comments if c.startswith("+")]
                doc = [c for c in comments if c and not c.startswith("+")]
                if rest.startswith("struct"):
                    current = GoType(name, "struct", markers, doc)
                else:
                    types[name] = GoType(name, rest, markers, doc)
            if not line.startswith("//"):
                comments = []
    return types


def _enum_from_markers(markers: list[str]) -> list[str] | None:
    for marker in markers:
        if marker.startswith("+kubebuilder:validation:Enum="):
            return marker.split("=", 1)[1].split(";")
        cel = CEL_IN.search(marker)
        if cel:
            return [item.strip().strip("'\"") for item in cel.group(1).split(",")]
    return None


class SchemaBuilder:
    def __init__(self, types: dict[str, GoType]):
        self.types = types
        self.defs: dict[str, dict] = {}

    def type_schema(self, expr: str) -> dict:
        if expr.startswith("*"):
            return self.type_schema(expr[1:])
        if expr.startswith("[]"):
            return {"type": "array", "items": self.type_schema(expr[2:])}
        if expr.startswith("map["):
            key, value = re.match(r"map\[([^\]]+)\](.+)", expr).groups()
            return {"type": "object", "additionalProperties": self.type_schema(value)}
        if expr in SCALARS:
            return dict(SCALARS[expr])
        if expr in CORE_TYPES:
            return {"$ref": f"{K8S_DEFINITIONS}#/$defs/{CORE_TYPES[expr]}"}
        if expr in CORE_STRINGS:
            return {"type": "string", "enum": CORE_STRINGS[expr]}
        if expr in self.types:
            self.define(expr)
            return {"$ref": f"#/$defs/{expr}"}
        raise SystemExit(f"generate.py: no schema rule for Go type {expr!r}; add it to CORE_TYPES or SCALARS")

    def define(self, name: str) -> None:
        if name in self.defs:
            return
        go = self.types[name]
        self.defs[name] = {}  # reserve first: recursive types terminate
        if go.underlying != "struct":
            schema = self.type_schema(go.underlying)
            enum = _enum_from_markers(go.markers)
            if enum:
                schema["enum"] = enum
        else:
            properties, required = {}, []
            for f in go.fields:
                prop = self.type_schema(f.go_type)
                enum = _enum_from_markers(f.markers)
                if enum:
                    prop = {"allOf": [prop], "enum": enum} if "$ref" in prop else {**prop, "enum": enum}
                if f.doc:
                    prop["description"] = " ".join(f.doc)
                properties[f.json_name] = prop
                defaulted = any(m.startswith("+kubebuilder:default") for m in f.markers)
                if not (f.omitempty or "+optional" in f.markers or defaulted):
                    required.append(f.json_name)
            schema = {"type": "object", "additionalProperties": False, "properties": properties}
            if required:
                schema["required"] = required
        if go.doc:
            schema["description"] = " ".join(go.doc)
        self.defs[name] = schema


def build_rayjob_schema(types: dict[str, GoType], source: str) -> dict:
    builder = SchemaBuilder(types)
    spec = builder.type_schema("RayJobSpec")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://edufilter.dev/k8s/schemas/rayjob-ray-v1.json",
        "description": f"RayJob (ray.io/v1) generated by k8s/schemas/generate.py from {source}; "
                       f"core Kubernetes types refer to kubernetes-validate's {K8S_DEFINITIONS}.",
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayJob"},
            "metadata": {"$ref": f"{K8S_DEFINITIONS}#/$defs/{CORE_TYPES['metav1.ObjectMeta']}"},
            "spec": spec,
            "status": {"type": "object"},
        },
        "$defs": dict(sorted(builder.defs.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="generate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--types-dir", required=True, type=Path,
                        help="folder with KubeRay's rayjob_types.go and raycluster_types.go (ray-operator/apis/ray/v1)")
    parser.add_argument("--source", required=True, help="where the Go files came from, recorded in the schema")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("rayjob-ray-v1.json"),
                        help="schema file to write (default: k8s/schemas/rayjob-ray-v1.json)")
    args = parser.parse_args(argv)
    sources = [(args.types_dir / name).read_text(encoding="utf-8")
               for name in ("raycluster_types.go", "rayjob_types.go")]
    schema = build_rayjob_schema(parse_go_types(sources), args.source)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes, {len(schema['$defs'])} types)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
