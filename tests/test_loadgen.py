"""The benchmarks' lean HTTP client (bench/loadgen.py) against a real socket server."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from loadgen import Connection, HttpError, percentile, query_load


class Server:
    """Answers by path: /echo (JSON of the body), /chunked, /teapot (418), /hang-up."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while request_line := await reader.readline():
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                path = request_line.split()[1].decode()
                if path == "/hang-up":
                    break
                writer.write(self.answer(path, body))
                await writer.drain()
        finally:
            writer.close()

    def answer(self, path: str, body: bytes) -> bytes:
        if path == "/chunked":
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        if path == "/api/v1/query":
            question = json.loads(body)["question"]
            payload = json.dumps({"duration_ms": 1.5, "cached": question == "hit"}).encode()
            status = b"200 OK"
        elif path == "/teapot":
            payload, status = b'{"detail": "short and stout"}', b"418 I'm a teapot"
        else:
            payload, status = json.dumps({"got": json.loads(body or b"null")}).encode(), b"200 OK"
        return (
            b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    state = Server()
    state.server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = state.server.sockets[0].getsockname()[1]
    async with state.server:
        yield state, f"http://127.0.0.1:{port}"


async def test_requests_share_one_kept_alive_connection(server: tuple[Server, str]) -> None:
    state, url = server
    connection = Connection(url)
    try:
        for i in range(3):
            assert await connection.post_json("/echo", {"n": i}) == {"got": {"n": i}}
        assert await connection.request("GET", "/echo") == {"got": None}
    finally:
        await connection.close()
    assert state.connections == 1


async def test_another_status_chunked_bodies_and_hang_ups_are_errors(
    server: tuple[Server, str],
) -> None:
    _, url = server
    connection = Connection(url)
    try:
        with pytest.raises(HttpError, match="418") as refused:
            await connection.post_json("/teapot", {})
        assert refused.value.status == 418
        assert await connection.post_json("/teapot", {}, expect=418) == {
            "detail": "short and stout"
        }
        with pytest.raises(HttpError, match="chunked"):
            await connection.request("GET", "/chunked")
    finally:
        await connection.close()
    hung_up = Connection(url)
    try:
        with pytest.raises(ConnectionError):
            await hung_up.request("GET", "/hang-up")
    finally:
        await hung_up.close()
    with pytest.raises(ValueError, match="only http"):
        Connection("https://127.0.0.1:1")


async def test_query_load_counts_every_answer(server: tuple[Server, str]) -> None:
    state, url = server
    figures = await query_load(url, 4, 40, ["hit", "miss"], brand="acme", cache=True)
    assert figures["hit_share"] == 0.5
    assert figures["server_p50"] == 1.5
    assert 0 < figures["p50"] <= figures["p99"]
    assert state.connections == 4


def test_percentile_picks_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 51.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
