"""The query's answer as server-sent events: `sources`, `delta`s, then `done`; `reset` and
`error` once streaming began (an HTTP status can no longer be sent)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator

from fastapi.responses import StreamingResponse

from helpline.common.messages import Answer, AnswerPart, Source
from helpline.gateway.errors import GatewayError, QueryFailed, QueryTimeout, reply_for
from helpline.gateway.schemas import QueryResponse, SourceOut

_PIECE = re.compile(r"\S+\s*")
WORDS_PER_DELTA = 4


def event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    # No caching and no proxy buffering: each event must reach the client as it is sent.
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _sources_event(sources: list[Source] | list[SourceOut]) -> bytes:
    # As the JSON answer shows them (times as ISO text; rag's own fields left out).
    shown = [SourceOut.model_validate(s.model_dump()).model_dump(mode="json") for s in sources]
    return sse("sources", {"sources": shown})


def deltas(text: str) -> Iterator[bytes]:
    """A finished text as `delta` events of a few words each; joined, exactly `text`."""
    words = _PIECE.findall(text)
    lead = text[: len(text) - len(text.lstrip())]
    for start in range(0, len(words), WORDS_PER_DELTA):
        piece = "".join(words[start : start + WORDS_PER_DELTA])
        yield sse("delta", {"text": lead + piece if start == 0 else piece})


def _error_event(exc: GatewayError) -> bytes:
    # The status the error table gives `exc`, sent as data: the response's is already 200.
    return sse("error", {"status": reply_for(exc).status, "detail": exc.message})


def _done_event(result: QueryResponse) -> bytes:
    return sse(
        "done",
        {
            "task_id": result.task_id,
            "duration_ms": result.duration_ms,
            "cached": result.cached,
            "answer_mode": result.answer_mode,
            "fallback_reason": result.fallback_reason,
        },
    )


async def answer_events(result: QueryResponse) -> AsyncIterator[bytes]:
    """A finished answer (cached, or extractive) as events: sources, deltas, done."""
    yield _sources_event(result.sources)
    for delta in deltas(result.answer):
        yield delta
    yield _done_event(result)


async def live_events(
    replies: AsyncIterator[AnswerPart | Answer],
    task_id: str,
    started: float,
    cited: Callable[[list[Source]], None] | None = None,
) -> AsyncIterator[bytes]:
    """Rag's replies as events while they come: sources, deltas as generated, done.

    An extractive answer arrives whole and is cut into deltas here. If the model failed
    after some text was sent, `reset` tells the client to drop that text; the extractive
    answer's deltas follow. Failures after the stream began are `error` events.
    """
    sources_sent = False
    streamed: list[str] = []
    try:
        async for reply in replies:
            if isinstance(reply, AnswerPart):
                if reply.sources is not None and not sources_sent:
                    sources_sent = True
                    yield _sources_event(reply.sources)
                if reply.text:
                    streamed.append(reply.text)
                    yield sse("delta", {"text": reply.text})
                continue
            if reply.error:
                yield _error_event(QueryFailed(reply.error))
                return
            if cited is not None:
                cited(reply.sources)  # fresh citations (`freshness`)
            if not sources_sent:
                yield _sources_event(reply.sources)
            if streamed and "".join(streamed) != reply.answer:
                streamed.clear()
                yield sse("reset", {"reason": reply.fallback_reason})
            if not streamed:
                for delta in deltas(reply.answer):
                    yield delta
            yield _done_event(QueryResponse.of(reply, task_id, started, cached=False))
            return
    except QueryTimeout as exc:
        yield _error_event(exc)
