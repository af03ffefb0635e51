"""The real all-in-one runner: `helpline up` as a process, over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpline.testing import HelplineUp

pytestmark = pytest.mark.slow

ENV = {"HELPLINE_SCRAPER_ALLOWED_HOSTS": "127.0.0.1", "HELPLINE_LOG_JSON": "false"}


def wait_terminal(client: httpx.Client, task_id: str, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = client.get(f"/api/v1/tasks/{task_id}").json()
        if record["status"] in {"succeeded", "failed", "expired", "cancelled"}:
            return record
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not terminal: {record}")


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def children_of(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


def ask(client: httpx.Client) -> dict:
    response = client.post(
        "/api/v1/query", json={"question": "What does error FW-409 mean?", "brand": "acme"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_restart_keeps_index_and_task_records(tmp_path: Path, docs_site: str) -> None:
    data_dir = tmp_path / "data"
    with HelplineUp(data_dir, ENV) as up, up.client() as client:
        response = client.post(
            "/api/v1/crawl", json={"url": f"{docs_site}/index.html", "brand": "acme"}
        )
        assert response.status_code == 202
        assert len(response.headers["x-trace-id"]) == 32
        crawl_id = response.json()["task_id"]
        before = wait_terminal(client, crawl_id)
        assert before["status"] == "succeeded"
        # Every process's metrics are reachable: the gateway's, and the workers' in up's own.
        gateway = metric_values(client.get("/metrics").text)
        crawl = (("method", "POST"), ("route", "/api/v1/crawl"), ("status", "202"))
        assert gateway[("helpline_http_requests_total", crawl)] == 1
        workers = metric_values(httpx.get(f"{up.probes_url}/metrics", timeout=10).text)

        def tasks(kind: str, outcome: str) -> float:
            labels = (("kind", kind), ("outcome", outcome), ("priority", "normal"))
            return workers.get(("helpline_tasks_total", labels), 0.0)

        # The crawl's outcome is its pages'; each page ended once, indexed or failed.
        assert tasks("crawl", "reported_later") == 1
        pages = tasks("scrape", "reported_later") + tasks("scrape", "failed")
        assert pages == before["progress"]["total"]
        first_answer = ask(client)
        assert first_answer["sources"][0]["url"] == f"{docs_site}/config/firewall.html"
        assert up.process is not None
        nats_children = children_of(up.process.pid)
        assert nats_children, "helpline up runs its own nats-server"
        # The admin key up made: owner-only in the data dir, its place logged, never itself.
        key_file = data_dir / "admin-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert str(key_file) in up.log_path.read_text()
        assert up.admin_key not in up.log_path.read_text()
        assert httpx.get(f"{up.url}/api/v1/tasks", timeout=10).status_code == 401
        # The CLI finds the key there (HELPLINE_DATA_DIR) by itself.
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "helpline"), "task", crawl_id, "--json"],
            env={**os.environ, "HELPLINE_DATA_DIR": str(data_dir), "HELPLINE_API_URL": up.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["status"] == "succeeded"
        # Once started, up's process and the gateway's froze what startup loaded.
        log = up.log_path.read_text()
        assert log.count("objects from startup frozen") == 2, log[-2000:]
    # Stopped with SIGTERM: the nats-server it started is gone too.
    for pid in nats_children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    # Restarted with every service in its one process (no children but nats-server).
    one_process = {**ENV, "HELPLINE_UP_OWN_PROCESSES": "[]"}
    with (
        HelplineUp(data_dir, one_process) as up,
        up.client() as client,
    ):
        assert up.process is not None
        commands = [command_line(p) for p in children_of(up.process.pid)]
        assert not any(" run " in c for c in commands), commands
        # The same key after a restart (up.client() sends what the file holds).
        after = client.get(f"/api/v1/tasks/{crawl_id}").json()
        assert after == before
        answer = ask(client)
        assert answer["sources"][0]["url"] == first_answer["sources"][0]["url"]
        assert "FW-409" in answer["answer"]


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_sigkill_of_helpline_up_leaves_no_nats_server(tmp_path: Path) -> None:
    up = HelplineUp(tmp_path / "data", ENV).start()
    assert up.process is not None
    nats_children = children_of(up.process.pid)
    # Its nats-server and its gateway (a process of its own).
    commands = [command_line(p) for p in nats_children]
    assert any("nats-server" in c for c in commands), commands
    assert any(c.endswith("run gateway ") for c in commands), commands
    up.process.send_signal(signal.SIGKILL)
    up.process.wait()
    assert still_alive(nats_children) == []


def still_alive(pids: list[int], within_s: float = 10.0) -> list[int]:
    """Those of `pids` still running after waiting up to `within_s` for them to go."""
    deadline = time.monotonic() + within_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        time.sleep(0.1)
    return alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0) until reaped by init; count it as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_a_gateway_that_dies_stops_helpline_up(tmp_path: Path) -> None:
    """The API is gone: `helpline up` does not linger without it, and leaves nothing behind."""
    up = HelplineUp(tmp_path / "data", ENV).start()
    assert up.process is not None
    children = children_of(up.process.pid)
    gateway = next(p for p in children if command_line(p).endswith("run gateway "))
    os.kill(gateway, signal.SIGKILL)
    assert up.process.wait(60) != 0
    assert still_alive(children) == []


def test_the_scraper_as_a_child_process_crawls(tmp_path: Path, docs_site: str) -> None:
    """HELPLINE_UP_OWN_PROCESSES moves a worker out too: its probes take a port of their own
    (the gateway has the API's), and the crawl goes through it."""
    env = {**ENV, "HELPLINE_UP_OWN_PROCESSES": '["gateway", "scraper"]'}
    with (
        HelplineUp(tmp_path / "data", env) as up,
        up.client() as client,
    ):
        assert up.process is not None
        commands = [command_line(p) for p in children_of(up.process.pid)]
        assert any(c.endswith("run scraper ") for c in commands), commands
        response = client.post(
            "/api/v1/crawl", json={"url": f"{docs_site}/index.html", "brand": "acme"}
        )
        assert response.status_code == 202
        record = wait_terminal(client, response.json()["task_id"])
        assert record["status"] == "succeeded", record
        assert ask(client)["sources"][0]["url"] == f"{docs_site}/config/firewall.html"


HEAVY = {
    "gateway": {"onnxruntime", "qdrant_client", "qdrant_edge", "playwright", "trafilatura"},
    "maintenance": {"onnxruntime", "qdrant_client", "playwright", "trafilatura", "fastapi"},
    "scraper": {"onnxruntime", "qdrant_client", "fastapi"},
}


@pytest.mark.parametrize("service", sorted(HEAVY))
def test_a_service_process_loads_only_its_own_libraries(service: str) -> None:
    """`helpline run <service>` builds its component without importing the others' heavy
    libraries (each cost seconds of start-up, paid by every replica and every restart)."""
    probe = (
        "import sys; from helpline.cli.runner import build_component; "
        f"build_component({service!r}, 'nats://127.0.0.1:1'); "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(out.stdout.split())
    assert "nats" in loaded  # the probe really built a component
    assert loaded & HEAVY[service] == set()
