"""``deploy/``: the alerting rules and the Grafana dashboard name only metrics a service exports.

A rule or a panel over a misspelt metric is silent forever; this test
scrapes a running service and checks every name they use. Where promtool
is installed (Debian's ``prometheus`` package) the rules are also checked
and their unit tests (``alerts.test.yml``) run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from infrastructure.database import PgTarget
from infrastructure.settings import Settings
from reporunner.wiring import create_app
from tests.helpers import serving
from tests.metrics_scrape import scrape

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "reporunner.json"
_METRIC = re.compile(r"\breporunner_[a-z0-9_]+")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


@pytest.fixture(scope="module")
def exported(db_target: PgTarget, app_settings: Settings) -> Iterator[set[str]]:
    """Every series name a running service exports (a histogram's _bucket, _count, _sum)."""
    with serving(create_app(app_settings, db_target, roles=("read-api",))) as base:
        families = scrape(base).families
    # A counter's series end in _total (the parser names its family without).
    yield {
        name + suffix for name, kind in families.items() for suffix in _SUFFIXES.get(kind, ("",))
    }


def _rules() -> list[dict[str, object]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def _panel_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def test_every_metric_the_alerts_name_exists(exported: set[str]) -> None:
    rules = _rules()
    assert {"ReporunnerProjectionStalled", "ReporunnerDeadLetters", "ReporunnerHigh5xxRate"} <= {
        str(rule["alert"]) for rule in rules
    }
    for rule in rules:
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule  # type: ignore[union-attr]
        assert rule.get("annotations", {}).get("summary"), rule  # type: ignore[union-attr]
        named = set(_METRIC.findall(str(rule["expr"])))
        assert named, rule
        assert named <= exported, f"{rule['alert']} names unknown metrics {named - exported}"


def test_every_metric_the_dashboard_names_exists(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = _panel_exprs()
    assert exprs
    for expr in exprs:
        named = set(_METRIC.findall(expr))
        assert named and named <= exported, f"{expr!r} names unknown metrics {named - exported}"


def test_the_alerts_cover_what_the_issue_asks() -> None:
    exprs = " ".join(str(rule["expr"]) for rule in _rules())
    for metric in (
        "reporunner_projection_lag_seconds",
        "reporunner_dead_letters",
        "reporunner_execution_queue_depth",
        "reporunner_http_request_duration_seconds_count",
        "reporunner_relay_lag_events",
        "reporunner_scheduler_last_tick_timestamp_seconds",
    ):
        assert metric in exprs


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    for args in (("check", "rules", RULES.name), ("test", "rules", "alerts.test.yml")):
        done = subprocess.run(
            ["promtool", *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
