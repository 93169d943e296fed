"""The JSON Schema of the anomaly event, generated from ``streamer.events.AnomalyEvent``.

The committed copy, ``schemas/anomaly-event.schema.json``, is what alerting systems code against; a test holds it
equal to ``event_schema()``. After changing the event model, regenerate it with
``logad schema > schemas/anomaly-event.schema.json`` (and bump ``SCHEMA_VERSION`` if the change is not additive).
"""

from __future__ import annotations

import json
from typing import Any

from streamer.events import SCHEMA_VERSION, AnomalyEvent

SCHEMA_ID = "urn:logad:schema:anomaly-event"


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
