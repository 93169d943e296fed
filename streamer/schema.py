"""The JSON Schema of the anomaly event, generated from ``streamer.events.AnomalyEvent``.

The committed copy, ``schemas/anomaly-event.schema.json``, is what alerting systems code against; a test holds it
equal to ``event_schema()``. After changing the event model, regenerate it with
``logad schema > schemas/anomaly-event.schema.json`` (and bump ``SCHEMA_VERSION`` if the change is not additive).

Every object of the schema admits properties it does not name (``additionalProperties: true``): a consumer that
validates against this version still accepts an event of a later one that only added fields. What the producer
itself emits is held to the declared properties by ``producer_schema`` (tests).
"""

from __future__ import annotations

import json
from typing import Any

from streamer.events import SCHEMA_ID, SCHEMA_VERSION, AnomalyEvent

__all__ = ["SCHEMA_ID", "event_schema", "producer_schema", "render_schema"]


def event_schema() -> dict[str, Any]:
    """The schema of the event as it is serialised on the wire (``model_dump_json``)."""
    schema = AnomalyEvent.model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "logad anomaly event",
            "description": f"One anomalous window of a session, as published on the anomalies topic (schema_version "
                           f"{SCHEMA_VERSION}). Key: the session id.",
            **{k: v for k, v in schema.items() if k not in ("title", "description")}}


def render_schema() -> str:
    return json.dumps(event_schema(), indent=2, sort_keys=True) + "\n"


def producer_schema() -> dict[str, Any]:
    """``event_schema()`` with every object closed (``additionalProperties: false``): what this version of the
    detector may emit, for tests of the producer; consumers validate with the open ``event_schema()``."""
    def close(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: close(v) for k, v in node.items()}
            if out.get("type") == "object" and "properties" in out:
                out["additionalProperties"] = False
            return out
        if isinstance(node, list):
            return [close(v) for v in node]
        return node
    return dict(close(event_schema()))
