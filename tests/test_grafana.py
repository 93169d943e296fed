"""The Grafana dashboard (deploy/grafana/dashboards/logad.json) asks only for metrics that exist, so renaming a
metric in the code fails here, not on an operator's empty panel. Also: the provisioning files point at the
compose stack's Prometheus and at the folder compose mounts, and (where promtool is installed) every query parses.

Metric names come from the collectors the code registers: the default registry (the detector's streamer.metrics,
the forwarder's streamer.alerts, the process and platform collectors) and logad serve's own registry
(streamer.metrics.SERVE_REGISTRY, with streamer.service's collectors), with the series names each type exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "logad.json"

# names of other exporters the stack scrapes: Prometheus's own `up`, redis_exporter's
EXTERNAL = {"up", "redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes"}
# series names per metric type, as the text exposition writes them (the family name of a counter lacks `_total`)
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "info": ("_info",), "gauge": ("",), "unknown": ("",),
            "stateset": ("",), "enum": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount")}

# PromQL words that are not metric names: keywords, aggregation and grouping words; functions are followed by "("
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
            "inf", "nan"}


def registered_names(*registries: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
            names |= {s.name for s in family.samples}
    return names


def exported() -> set[str]:
    import streamer.alerts  # noqa: F401  (registers the forwarder's collectors)
    import streamer.service  # noqa: F401  (registers the API's collectors in SERVE_REGISTRY)
    from streamer import metrics

    return registered_names(REGISTRY, metrics.SERVE_REGISTRY) | EXTERNAL


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: every identifier left once string literals, label matchers
    ``{...}``, ranges ``[...]``, grouping label lists (``by (...)``, ``on (...)``, ...), function calls and keywords
    are taken out."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", s)  # functions and aggregations
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables ($__rate_interval), should one stand outside [...]
    words = re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", s)
    return {w for w in words if w.lower() not in KEYWORDS}


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every target, rows' nested panels included."""
    out = []
    for panel in dashboard["panels"]:
        for p in (panel, *panel.get("panels", [])):
            out += [(p["title"], t["expr"]) for t in p.get("targets", [])]
    return out


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_metric_names_are_read_from_promql():
    assert metric_names('sum by (reason) (rate(logad_lines_rejected_total{reason!="x", job=~"a|b"}[5m]))') == {
        "logad_lines_rejected_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(logad_score_seconds_bucket[$__rate_interval])))"
                        ) == {"logad_score_seconds_bucket"}
    assert metric_names('time() - max(a_seconds) and on (instance) b_total > 0 or vector(0)') == {"a_seconds",
                                                                                                 "b_total"}
    assert metric_names('count(up{job="logad"} == 1)') == {"up"}


def test_every_query_uses_metrics_the_code_registers():
    names = exported()
    assert {"logad_build_info", "logad_consumer_lag", "logad_score_seconds_bucket", "logad_alerts_sent_total",
            "logad_serve_requests_total", "logad_serve_detect_in_flight", "process_resident_memory_bytes"} <= names
    qs = queries(load())
    assert len(qs) > 20
    for title, expr in qs:
        used = metric_names(expr)
        assert used, (title, expr)
        assert used <= names, f"panel {title!r} asks for {sorted(used - names)}, which no collector registers"


def test_a_renamed_metric_fails_the_check():
    names = exported()
    dash = load()
    dash["panels"][1]["targets"][0]["expr"] = "sum(logad_ready_replicas)"  # a name the code does not have
    bad = [(t, e) for t, e in queries(dash) if not metric_names(e) <= names]
    assert bad == [(dash["panels"][1]["title"], "sum(logad_ready_replicas)")]


def test_dashboard_is_well_formed():
    dash = load()
    assert dash["uid"] == "logad" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    ds_var = {v["name"]: v for v in dash["templating"]["list"]}["datasource"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]  # importable into any Grafana
            assert all(t["refId"] and t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
    # no two panels overlap
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[(x, y)] = p["title"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH (scripts/setup.sh installs the "
                                                              "Debian package prometheus)")
def test_every_query_parses(tmp_path):
    """Each query as a recording rule, so ``promtool check rules`` parses it as Prometheus would."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
             for i, (_, expr) in enumerate(queries(load()))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_provisioning_points_at_the_stack():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    svc = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    (prom,) = [d for d in ds if d["type"] == "prometheus"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", prom["url"]).groups()
    assert host in compose["services"] and any(p.endswith(f":{port}") for p in compose["services"][host]["ports"])
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert prom["jsonData"]["timeInterval"] == scrape  # $__rate_interval spans enough scrapes
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "logad.yml").read_text())["providers"]
    (provider,) = providers
    folder = provider["options"]["path"]
    assert mounts[folder] == "./deploy/grafana/dashboards" and (REPO / mounts[folder] / DASHBOARD.name).is_file()
    assert svc["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{folder}/{DASHBOARD.name}"
    assert svc["profiles"] == ["grafana"]  # opt-in: a plain `docker compose up` starts what it did before
