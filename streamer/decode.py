"""Kafka message value -> one log line: the decoder lives in ``logbert_core.ingest`` (the one ingest path of the
detector, ``logad serve`` and ``logad-train``); this module keeps its names where the streamer imports them."""

from logbert_core.ingest import (
    CONTROL_CHARS,
    EMPTY,
    INVALID_JSON,
    INVALID_UTF8,
    JSON_NO_FIELD,
    JSON_WRONG_TYPE,
    REASONS,
    TOO_LARGE,
    LineReader,
    Rejected,
    ValueDecoder,
)

__all__ = ["CONTROL_CHARS", "EMPTY", "INVALID_JSON", "INVALID_UTF8", "JSON_NO_FIELD", "JSON_WRONG_TYPE", "REASONS",
           "TOO_LARGE", "LineReader", "Rejected", "ValueDecoder"]
