"""Delivery to Alertmanager: ``POST /api/v2/alerts`` over HTTP(S), basic auth from the URL's user info. A failed
POST is a ``DeliveryError``; ``rejected`` when Alertmanager refused the payload as malformed (400/422), which no retry
cures. Retrying the others is the forwarder's business (``streamer.alerts``)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from streamer.errors import LogadError

API_PATH = "/api/v2/alerts"


class AlertsError(LogadError):
    """The forwarder cannot start or deliver: the message names what and how to fix it."""


class DeliveryError(AlertsError):
    """A POST that did not succeed; ``rejected`` when the receiver refused the payload as malformed."""

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


class AlertSink(Protocol):
    def post(self, alerts: Sequence[Mapping[str, Any]]) -> None: ...


def alerts_url(base: str) -> str:
    """The v2 alerts endpoint of an Alertmanager given by its base URL (``http://alertmanager:9093``) or by the
    endpoint itself."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlertsError(f"--alertmanager must be an http(s) URL such as http://alertmanager:9093, got {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(API_PATH):
        path += API_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Alertmanager:
    """POSTs alerts to ``/api/v2/alerts``. Basic auth from the URL's user info (``https://user:pass@host``)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = alerts_url(url)
        parts = urllib.parse.urlsplit(self.url)
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            creds = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
            netloc = parts.netloc.rsplit("@", 1)[1]
            self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # never the credentials
        return f"Alertmanager({self.url!r})"

    def post(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        req = urllib.request.Request(self.url, data=json.dumps(list(alerts)).encode(), method="POST",
                                     headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()[:300].decode("utf-8", "replace").strip()
            raise DeliveryError(f"{self.url} answered {exc.code}: {body}", rejected=exc.code in (400, 422)) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise DeliveryError(f"{self.url} unreachable: {exc}") from exc
