"""Generated answers against a local OpenAI-compatible server started by the test: citations
map to sources; with the server down the breaker opens and extractive answers continue."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from answer_helpers import ask, index_page, write_page
from conftest import System, start_system, stop_system

from helpline.cli.natsserver import NatsServer
from helpline.common.embedding import Embedder
from helpline.testing import serve_site

QUESTION = "How long is the warranty on the X200 router?"
# [1] is the one source; [3] and [2, 9] point at none and must not reach the customer.
REPLY = "The X200 router has a warranty of two years [1]. Keep your receipt [3][2, 9]."


@dataclass
class ChatServer:
    """A minimal chat completions endpoint; records what it was asked."""

    url: str
    server: ThreadingHTTPServer
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    # Streamed replies stop half-way without `data: [DONE]` (a connection cut mid-answer).
    break_streams: list[bool] = field(default_factory=lambda: [False])
    # Every request answers 503.
    failing: list[bool] = field(default_factory=lambda: [False])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    recorded: list[dict[str, Any]] = []
    headers: list[dict[str, str]] = []
    break_streams = [False]
    failing = [False]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            recorded.append(body)
            headers.append(dict(self.headers))
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            if failing[0]:
                self.send_error(503)
                return
            if body.get("stream"):
                self.stream_reply(body["model"])
                return
            reply = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": REPLY},
                        "finish_reason": "stop",
                    }
                ],
            }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def stream_reply(self, model: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            # Small pieces, so markers like "[3]" and "[2, 9]" arrive split across chunks.
            pieces = [REPLY[i : i + 3] for i in range(0, len(REPLY), 3)]
            if break_streams[0]:
                pieces = pieces[: len(pieces) // 2]
            for piece in pieces:
                chunk = {"model": model, "choices": [{"index": 0, "delta": {"content": piece}}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            if not break_streams[0]:
                self.wfile.write(b"data: [DONE]\n\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    chat = ChatServer(
        f"http://127.0.0.1:{server.server_address[1]}/v1",
        server,
        recorded,
        headers,
        break_streams,
        failing,
    )
    try:
        yield chat
    finally:
        if thread.is_alive():
            chat.stop()
        thread.join(5)


@pytest.fixture
async def system_with_llm(
    request: pytest.FixtureRequest,
    nats_server: NatsServer,
    prefix: str,
    tmp_path: Path,
    model: Embedder,
    chat_server: ChatServer,
) -> AsyncIterator[System]:
    """The system with a model; the answer cache is off unless the test asks (indirect True)."""
    root = tmp_path / "site"
    write_page(
        root,
        "acme/warranty.html",
        "X200 router warranty",
        "The Acme X200 router comes with a warranty of two years from the date of purchase.",
        "To claim the warranty, contact Acme support with the serial number and your receipt.",
    )
    with serve_site(root) as url:
        running = await start_system(
            nats_server.url,
            prefix,
            tmp_path / "data",
            model,
            llm_base_url=chat_server.url,
            llm_model="test-model",
            llm_api_key="test-key",
            llm_breaker_failures=2,
            llm_breaker_open_s=60.0,
            # Every question goes to rag (a cached answer would hide the model's state).
            answer_cache=getattr(request, "param", False),
        )
        try:
            await index_page(running, f"{url}/acme/warranty.html", "acme")
            yield running
        finally:
            await stop_system(running)


def markers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\[(\d+)\]", text)]


async def test_generated_answer_cites_only_real_sources(
    system_with_llm: System, chat_server: ChatServer
) -> None:
    answer = await ask(system_with_llm, QUESTION, "acme")
    assert answer["answer_mode"] == "llm"
    assert answer["fallback_reason"] is None
    assert len(answer["sources"]) == 1
    assert answer["answer"] == "The X200 router has a warranty of two years [1]. Keep your receipt."
    assert all(1 <= n <= len(answer["sources"]) for n in markers(answer["answer"]))

    # The model was given the passage, numbered like the sources, and the question.
    (request,) = chat_server.requests
    assert request["model"] == "test-model"
    user = request["messages"][-1]["content"]
    assert "[1] X200 router warranty" in user
    assert "two years from the date of purchase" in user
    assert QUESTION in user
    assert chat_server.headers[0]["Authorization"] == "Bearer test-key"
    # This system runs with the answer cache turned off.
    assert (await system_with_llm.client.get("/api/v1/cache/stats")).status_code == 404


async def test_model_down_opens_the_breaker_and_extractive_answers_continue(
    system_with_llm: System, chat_server: ChatServer
) -> None:
    assert (await ask(system_with_llm, QUESTION, "acme"))["answer_mode"] == "llm"
    chat_server.stop()

    reasons = []
    for _ in range(3):
        answer = await ask(system_with_llm, QUESTION, "acme")
        assert answer["answer_mode"] == "extractive"
        assert "two years" in answer["answer"]
        assert "[1]" in answer["answer"]
        assert answer["sources"][0]["url"].endswith("/acme/warranty.html")
        reasons.append(answer["fallback_reason"])
    # Two failures open the breaker (the policy of this test); then the model is not called.
    assert "unreachable" in reasons[0], reasons
    assert "unreachable" in reasons[1], reasons
    assert reasons[2] == "language model circuit open"
    breaker = next(
        b for b in system_with_llm.host.bus.breakers.snapshot() if b["name"] == "language-model"
    )
    assert breaker["state"] == "open"
    assert breaker["times_opened"] == 1
    assert len(chat_server.requests) == 1


def read_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    assert raw.endswith("\n\n")
    events = []
    for block in raw.strip("\n").split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ")
        assert data.startswith("data: ")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


async def stream(system: System, question: str) -> list[tuple[str, dict[str, Any]]]:
    async with system.client.stream(
        "POST", "/api/v1/query", json={"question": question, "brand": "acme", "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join([chunk async for chunk in response.aiter_text()])
    return read_events(raw)


async def test_streamed_generated_answer_passes_the_models_pieces_through(
    system_with_llm: System, chat_server: ChatServer
) -> None:
    events = await stream(system_with_llm, QUESTION)
    names = [name for name, _data in events]
    assert names[0] == "sources"
    assert names[-1] == "done"
    assert set(names[1:-1]) == {"delta"}
    # The model's pieces, repaired on the way, not one finished answer cut up afterwards.
    assert len(names) > 10
    text = "".join(data["text"] for name, data in events if name == "delta")
    assert text == "The X200 router has a warranty of two years [1]. Keep your receipt."
    assert events[-1][1]["answer_mode"] == "llm"
    assert events[-1][1]["cached"] is False
    assert chat_server.requests[-1]["stream"] is True


async def test_stream_broken_off_resets_to_the_extractive_answer(
    system_with_llm: System, chat_server: ChatServer
) -> None:
    chat_server.break_streams[0] = True
    events = await stream(system_with_llm, QUESTION)
    names = [name for name, _data in events]
    assert names[0] == "sources"
    assert names[-1] == "done"
    assert names.count("reset") == 1
    after = names.index("reset")
    assert "delta" in names[1:after]
    text = "".join(data["text"] for name, data in events[after:] if name == "delta")
    assert "two years" in text
    assert "[1]" in text
    done = events[-1][1]
    assert done["answer_mode"] == "extractive"
    assert done["fallback_reason"] == "language model stream broke off"


@pytest.mark.parametrize("system_with_llm", [True], indirect=True)
async def test_fallback_answers_are_not_cached(
    system_with_llm: System, chat_server: ChatServer
) -> None:
    chat_server.failing[0] = True
    fallback = await ask(system_with_llm, QUESTION, "acme")
    assert fallback["answer_mode"] == "extractive"
    assert fallback["fallback_reason"] == "language model answered HTTP 503"
    assert fallback["cached"] is False

    # The model is back (one failure left the breaker closed): the question gets its
    # generated answer, not the fallback, and that one is cached.
    chat_server.failing[0] = False
    generated = await ask(system_with_llm, QUESTION, "acme")
    assert (generated["answer_mode"], generated["cached"]) == ("llm", False)
    again = await ask(system_with_llm, QUESTION, "acme")
    assert (again["answer_mode"], again["cached"]) == ("llm", True)
    assert again["answer"] == generated["answer"]
