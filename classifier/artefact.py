"""The model artefact: a directory with the model files and `model.json`.

model.json records what the model is (id, version, kind, domain, threshold,
normalisation settings), what it learnt from (label distribution, training
data hash, label files), how (hyperparameters, seed) and how well (the
evaluation it passed). `version` is a hash of the weight files, so a score
stamped with it names exactly the weights that produced it; loading recomputes
the hash and refuses a directory whose files do not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "edufilter-classifier"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
KINDS = ("fasttext", "embedding", "tfidf")


class ArtefactError(ValueError):
    """A model directory that cannot be loaded: missing, corrupt, or written by another format version."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_version(file_hashes: dict[str, str], extra: str = "") -> str:
    """The model version: a short hash over the weight files' hashes (and anything else that sets the scores)."""
    h = hashlib.sha256()
    for name in sorted(file_hashes):
        h.update(f"{name}\t{file_hashes[name]}\n".encode())
    h.update(extra.encode())
    return h.hexdigest()[:16]


def finalize_artefact(staging: Path, output: str | os.PathLike, info: dict[str, Any], files: list[str]) -> dict:
    """Hash the model files in `staging`, write model.json, and move the directory onto `output` atomically.

    An existing `output` is replaced only once the new artefact is complete.
    """
    hashes = {name: file_sha256(staging / name) for name in files}
    extra = json.dumps(info.get("scoring", {}), sort_keys=True)  # calibration/normalisation change scores too
    version = weights_version(hashes, extra)
    info = dict(info)
    info.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        version=version,
        model_id=f"edufilter-{info['domain']}-{info['kind']}-{version[:8]}",
        files=hashes,
    )
    (staging / MODEL_JSON).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists():
        if not output.is_dir():
            raise ArtefactError(f"{output}: exists and is not a directory")
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
        os.replace(output, old / "model")
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)
    return info


def staging_dir(output: str | os.PathLike) -> Path:
    """A fresh temporary directory beside `output` (same filesystem, so the final rename is atomic)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))


def read_artefact(model_dir: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read and check model.json; with `verify`, recompute every file hash and the version."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ArtefactError(f"{model_dir}: model directory not found")
    meta = model_dir / MODEL_JSON
    if not meta.exists():
        raise ArtefactError(f"{model_dir}: no {MODEL_JSON}; not an edufilter model directory")
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtefactError(f"{meta}: corrupt model.json ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ArtefactError(f"{meta}: not an {FORMAT} artefact (format={info.get('format') if isinstance(info, dict) else None!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(
            f"{meta}: format_version {info.get('format_version')!r} is not the supported {FORMAT_VERSION}; "
            "retrain the model with this edufilter version"
        )
    for field in ("kind", "domain", "version", "files", "threshold", "scoring"):
        if field not in info:
            raise ArtefactError(f"{meta}: field {field!r} missing")
    if info["kind"] not in KINDS:
        raise ArtefactError(f"{meta}: field 'kind': unknown kind {info['kind']!r}")
    if verify:
        for name, expected in info["files"].items():
            path = model_dir / name
            if not path.exists():
                raise ArtefactError(f"{model_dir}: model file {name} listed in model.json is missing")
            actual = file_sha256(path)
            if actual != expected:
                raise ArtefactError(
                    f"{path}: sha256 {actual[:16]}... does not match model.json ({expected[:16]}...); "
                    "the file is corrupt or from another model"
                )
        version = weights_version(info["files"], json.dumps(info.get("scoring", {}), sort_keys=True))
        if version != info["version"]:
            raise ArtefactError(f"{meta}: version {info['version']} does not match its files ({version})")
    return info
