"""The JSON of ``logad serve``'s ``POST /detect`` (``streamer.service``): the request and its answer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from streamer.events import Explanation, WindowExtent


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DetectRequest(_Wire):
    lines: list[str] = Field(description="raw log lines (or Fluent Bit-style JSON records), any order",
                             examples=[["081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for "
                                        "block blk_38865049064139660 terminating"]])


class RejectedLine(_Wire):
    index: int = Field(description="0-based position in the request's lines")
    reason: str = Field(description="the dead-letter reason the stream would give (empty, format_mismatch, ...)")
    detail: str


class SessionResult(_Wire):
    session_id: str
    anomalous: bool = Field(description="any window of the session is flagged")
    score: float = Field(description="highest share of unexpected keys over the session's windows")
    threshold: float = Field(description="the bundle's calibrated threshold for the score")
    distance: float = Field(description="largest hypersphere distance over the session's windows")
    distance_threshold: float
    line_count: int = Field(description="distinct entries of the session (an identical line counts once)")
    windows: int
    flagged_windows: int
    reasons: list[str] = Field(description="rules that fired, over all flagged windows")
    explanation: Explanation = Field(description="the highest-scoring flagged window, explained as in anomaly "
                                                 "events; for a normal session a one-line summary")
    window: WindowExtent | None = Field(default=None, description="the explained window (anomalous sessions)")


class DetectResponse(_Wire):
    model_version: str
    sessions: list[SessionResult] = Field(description="in order of each session's first timestamp")
    rejected: list[RejectedLine] = Field(default_factory=list)
