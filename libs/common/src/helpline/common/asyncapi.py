"""The bus contract as an AsyncAPI 3.0 document, generated from `subjects` and `messages`.

Nothing here is written by hand twice: channel addresses come from the subject functions,
payload schemas from the pydantic models (`TASK_MODELS` for tasks). The gateway serves the
document at `/asyncapi.json`; docs/asyncapi.json is the copy checked in, and a test fails
when the two differ (regenerate: `uv run python -m helpline.common.asyncapi`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from helpline.common import subjects
from helpline.common.messages import (
    REPLY_PART_HEADER,
    TASK_MODELS,
    Answer,
    AnswerPart,
    DeadLetter,
    TaskEvent,
)
from helpline.common.subjects import Bucket, Kind

ASYNCAPI_VERSION = "3.0.0"
#: The services that work each kind of task.
WORKED_BY = {
    Kind.SCRAPE: "scraper",
    Kind.CRAWL: "scraper",
    Kind.EMBED: "embedder",
    Kind.QUERY: "rag",
    Kind.MAINTENANCE: "maintenance",
    Kind.WEBHOOK: "maintenance",
}


def document(prefix: str = subjects.PREFIX, version: str = "0.1.0") -> dict[str, Any]:
    """The AsyncAPI document of the bus under `prefix`."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    def message(model: type[BaseModel], summary: str) -> dict[str, str]:
        name = model.__name__
        if name not in messages:
            messages[name] = {
                "name": name,
                "title": name,
                "summary": summary,
                "contentType": "application/json",
                "payload": _schema(model, schemas),
            }
        return {"$ref": f"#/components/messages/{name}"}

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for kind in Kind:
        model = TASK_MODELS[kind]
        task_channel = f"tasks_{kind}"
        channels[task_channel] = {
            "address": subjects.tasks_wildcard(kind, prefix).removesuffix("*") + "{priority}",
            "title": f"{kind} tasks",
            "description": (
                f"Work-queue stream {subjects.stream(kind, prefix)}; one durable pull consumer "
                f"per priority ({kind}-<priority>), "
                "shared by every replica. The task id is the Nats-Msg-Id."
            ),
            "parameters": {
                "priority": {
                    "enum": [str(p) for p in subjects.PRIORITIES_HIGH_FIRST],
                    "description": "Higher priorities are served first; lower ones keep a share.",
                }
            },
            "messages": {model.__name__: message(model, f"A {kind} task.")},
        }
        operations[f"submit_{kind}"] = _operation("send", task_channel, model, "gateway")
        operations[f"work_{kind}"] = _operation("receive", task_channel, model, WORKED_BY[kind])
        event_channel = f"events_{kind}"
        channels[event_channel] = {
            "address": subjects.event(kind, prefix),
            "title": f"{kind} task events",
            "description": (
                f"Stream {subjects.events_stream(prefix)}; the gateway's tracker "
                f"(durable {subjects.TRACKER_CONSUMER}) folds them into task records."
            ),
            "messages": {"TaskEvent": message(TaskEvent, "A worker's report on a task.")},
        }
        operations[f"report_{kind}"] = _operation("send", event_channel, TaskEvent, WORKED_BY[kind])
        operations[f"track_{kind}"] = _operation("receive", event_channel, TaskEvent, "gateway")
        dlq_channel = f"dlq_{kind}"
        channels[dlq_channel] = {
            "address": subjects.dlq(kind, "{task_id}", prefix),
            "title": f"{kind} dead letters",
            "description": f"Stream {subjects.dlq_stream(prefix)}; one subject per task.",
            "parameters": {"task_id": {"description": "The dead task's id."}},
            "messages": {"DeadLetter": message(DeadLetter, "A task that gave up.")},
        }
        operations[f"dead_letter_{kind}"] = _operation(
            "send", dlq_channel, DeadLetter, WORKED_BY[kind]
        )
    channels["answers"] = {
        "address": None,
        "title": "answers",
        "description": (
            "A query's reply inbox (its reply_to, core NATS): `AnswerPart`s, carrying the "
            f"{REPLY_PART_HEADER} header, while a streamed answer is generated, then the `Answer`."
        ),
        "messages": {
            "Answer": message(Answer, "The answer to a query, with its sources."),
            "AnswerPart": message(AnswerPart, "A piece of an answer being generated."),
        },
    }
    operations["answer"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/answers"},
        "summary": "rag answers a query on its reply inbox.",
        "x-service": "rag",
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Helpline bus",
            "version": version,
            "description": (
                "Every piece of Helpline's work is a task on NATS JetStream. KV buckets "
                f"(JetStream streams KV_{subjects.bucket('<name>', prefix)}): "
                + ", ".join(str(b) for b in Bucket)
                + "."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _operation(action: str, channel: str, model: type[BaseModel], service: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{model.__name__}"}],
        "x-service": service,
    }


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    """The model's JSON schema among the components (its nested models too); a reference."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, nested in schema.pop("$defs", {}).items():
        schemas.setdefault(name, nested)
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def main() -> None:
    """Print the document (what docs/asyncapi.json holds)."""
    sys.stdout.write(json.dumps(document(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
