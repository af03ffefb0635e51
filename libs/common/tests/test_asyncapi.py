"""The AsyncAPI document: generated from the contract, checked in, and self-consistent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from helpline.common import subjects
from helpline.common.asyncapi import document
from helpline.common.messages import TASK_MODELS, ScrapeTask, TaskEvent
from helpline.common.subjects import Kind, Priority

CHECKED_IN = Path(__file__).resolve().parents[3] / "docs" / "asyncapi.json"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for one message's payload, its references resolved in the document."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:doc",
        Resource.from_contents({**doc, "$schema": "https://json-schema.org/draft/2020-12/schema"}),
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:doc#/components/schemas/{name}"}, registry=registry
    )


def test_the_checked_in_document_is_the_generated_one() -> None:
    generated = json.loads(json.dumps(document(), sort_keys=True))
    assert json.loads(CHECKED_IN.read_text()) == generated, (
        "docs/asyncapi.json is stale: uv run python -m helpline.common.asyncapi > docs/asyncapi.json"
    )


def test_every_reference_resolves_and_every_payload_is_a_valid_schema() -> None:
    doc = document()
    refs = _refs(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        _resolve(doc, ref)  # raises KeyError if it points nowhere
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)  # raises SchemaError if not


def test_every_kind_has_its_channels_and_parameters_match_addresses() -> None:
    doc = document(prefix="acme")
    for kind in Kind:
        tasks = doc["channels"][f"tasks_{kind}"]
        assert tasks["address"] == f"acme.tasks.{kind}.{{priority}}"
        assert TASK_MODELS[kind].__name__ in tasks["messages"]
        assert tasks["parameters"]["priority"]["enum"] == [
            str(p) for p in subjects.PRIORITIES_HIGH_FIRST
        ]
        assert doc["channels"][f"events_{kind}"]["address"] == subjects.event(kind, "acme")
        assert doc["channels"][f"dlq_{kind}"]["address"] == f"acme.dlq.{kind}.{{task_id}}"
    for channel in doc["channels"].values():
        named = set(re.findall(r"{(\w+)}", channel["address"] or ""))
        assert named == set(channel.get("parameters", {})), channel["address"]
    for operation in doc["operations"].values():
        assert operation["action"] in {"send", "receive"}


@pytest.mark.parametrize(
    ("name", "message", "valid"),
    [
        (
            "ScrapeTask",
            ScrapeTask(task_id="t1", url="https://docs.example.com/a", brand="acme"),
            True,
        ),
        ("ScrapeTask", {"task_id": "t1", "priority": "urgent"}, False),
        ("TaskEvent", TaskEvent(task_id="t1", kind=Kind.SCRAPE, type="started"), True),
    ],
)
def test_payload_schemas_accept_real_messages_and_refuse_wrong_ones(
    name: str, message: Any, valid: bool
) -> None:
    payload = message.model_dump(mode="json") if hasattr(message, "model_dump") else message
    errors = list(_validator(document(), name).iter_errors(payload))
    assert (not errors) is valid, errors


def test_a_task_published_at_any_priority_matches_its_channel() -> None:
    doc = document()
    for kind in Kind:
        pattern = doc["channels"][f"tasks_{kind}"]["address"].replace("{priority}", "([a-z]+)")
        for priority in Priority:
            match = re.fullmatch(pattern, subjects.task(kind, priority))
            assert match is not None
            assert match.group(1) == str(priority)
