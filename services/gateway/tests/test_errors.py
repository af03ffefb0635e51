"""The error table through the real app: each domain error's status, headers and body, with a
stand-in for `Tasks` (no bus)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from helpline.common.errors import BUS_SILENT, Overloaded
from helpline.common.messages import Answer, AnswerPart, QueryTask
from helpline.common.records import Status, TaskRecord
from helpline.common.subjects import Kind
from helpline.gateway.app import create_app
from helpline.gateway.errors import QueryTimeout
from helpline.gateway.keys import ApiKey, KeyRing, Scope, digest, new_key
from helpline.gateway.settings import GatewaySettings


class FakeStore:
    def __init__(self, record: TaskRecord | None) -> None:
        self.record = record

    async def get(self, task_id: str) -> TaskRecord | None:
        return self.record


class FakeTasks:
    """What the routes under test call; `outcome` is what asking answers (or raises)."""

    def __init__(self, outcome: Answer | Exception, record: TaskRecord | None = None) -> None:
        self.cache = None
        self.outcome = outcome
        self.store = FakeStore(record)
        self.asked: list[QueryTask] = []

    def reply_to(self, task_id: str) -> str:
        return f"replies.{task_id}"

    async def ask(self, task: QueryTask, timeout_s: float) -> Answer:
        self.asked.append(task)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    async def ask_streaming(
        self, task: QueryTask, timeout_s: float
    ) -> AsyncIterator[AnswerPart | Answer]:
        self.asked.append(task)
        if isinstance(self.outcome, Overloaded):
            raise self.outcome
        return self._replies()

    async def _replies(self) -> AsyncIterator[AnswerPart | Answer]:
        yield AnswerPart(task_id="t", text="Hold it ")
        if isinstance(self.outcome, Exception):
            raise self.outcome
        yield self.outcome


KEY = new_key()


def client(tasks: FakeTasks | None) -> httpx.AsyncClient:
    app = create_app(GatewaySettings())
    app.state.tasks = tasks
    ring = KeyRing()
    ring.put(ApiKey(id="admin", name="test", scopes=[Scope.ADMIN], hash=digest(KEY)))
    app.state.keys = ring
    # The 500 handler answers, then Starlette re-raises for the server's log: not for a test.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(
        transport=transport, base_url="http://gateway", headers={"Authorization": f"Bearer {KEY}"}
    )


ASK = {"question": "How long do I hold the reset button?", "brand": "acme", "cache": False}


@pytest.mark.parametrize(
    ("outcome", "status", "detail", "retry_after"),
    [
        (
            QueryTimeout(2.5),
            504,
            "the query was not answered before its deadline (no answer within 2.5s)",
            None,
        ),
        (
            Answer(task_id="t", answer="", sources=[], error="boom"),
            502,
            "the query failed: boom",
            None,
        ),
        (Overloaded("the query queue is full"), 503, "the query queue is full", "5"),
        (TimeoutError("$KV_answers: internals"), 503, BUS_SILENT, "5"),
        (RuntimeError("internals"), 500, "internal error", None),
    ],
)
async def test_a_query_error_is_its_row_of_the_table(
    outcome: Answer | Exception, status: int, detail: str, retry_after: str | None
) -> None:
    async with client(FakeTasks(outcome)) as http:
        response = await http.post("/api/v1/query", json=ASK)
    assert response.status_code == status
    assert response.json() == {"detail": detail}
    assert response.headers.get("retry-after") == retry_after


@pytest.mark.parametrize(
    ("outcome", "status", "detail"),
    [
        (
            QueryTimeout(2.5),
            504,
            "the query was not answered before its deadline (no answer within 2.5s)",
        ),
        (Answer(task_id="t", answer="", sources=[], error="boom"), 502, "the query failed: boom"),
    ],
)
async def test_a_streamed_query_error_is_an_event_with_the_tables_status(
    outcome: Answer | Exception, status: int, detail: str
) -> None:
    async with client(FakeTasks(outcome)) as http:
        response = await http.post("/api/v1/query", json={**ASK, "stream": True})
    assert response.status_code == 200
    last = response.text.strip().split("\n\n")[-1]
    assert last == f'event: error\ndata: {{"status":{status},"detail":"{detail}"}}'


async def test_a_refused_streamed_query_is_503_before_streaming() -> None:
    async with client(FakeTasks(Overloaded("the query queue is full"))) as http:
        response = await http.post("/api/v1/query", json={**ASK, "stream": True})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


async def test_a_gateway_without_its_bus_asks_to_retry_in_a_second() -> None:
    async with client(None) as http:
        response = await http.get("/api/v1/tasks/abc")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"detail": "the gateway is starting"}


async def test_unknown_and_finished_tasks() -> None:
    finished = TaskRecord(task_id="abc", kind=Kind.SCRAPE, status=Status.SUCCEEDED)
    async with client(FakeTasks(RuntimeError(), record=None)) as http:
        unknown = await http.delete("/api/v1/tasks/abc")
        invalid = await http.get("/api/v1/tasks/not%20a%20key")
    async with client(FakeTasks(RuntimeError(), record=finished)) as http:
        done = await http.delete("/api/v1/tasks/abc")
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "no task with id 'abc'"})
    assert invalid.status_code == 404
    assert (done.status_code, done.json()) == (409, {"detail": "task abc already succeeded"})


async def test_a_turned_off_cache_is_404() -> None:
    async with client(FakeTasks(RuntimeError())) as http:
        response = await http.get("/api/v1/cache/stats")
    assert response.status_code == 404
    assert "HELPLINE_ANSWER_CACHE=false" in response.json()["detail"]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_query_travels_as_one_message_built_from_the_request(stream: bool) -> None:
    tasks = FakeTasks(Answer(task_id="t", answer="Ten seconds.", sources=[]))
    async with client(tasks) as http:
        response = await http.post(
            "/api/v1/query", json={**ASK, "top_k": 3, "priority": "high", "stream": stream}
        )
    assert response.status_code == 200
    (task,) = tasks.asked
    assert (task.question, task.brand, task.top_k, task.priority) == (
        ASK["question"],
        "acme",
        3,
        "high",
    )
    assert task.stream is stream
    assert task.cache_key is None
    assert task.reply_to == f"replies.{task.task_id}"
    assert task.deadline is not None
    assert task.created_at is not None
    assert task.deadline > task.created_at
