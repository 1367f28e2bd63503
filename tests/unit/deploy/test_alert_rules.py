"""Monitoring files: alert rules, their unit tests, the scrape config and the dashboard.

`promtool` (Debian's `prometheus` package) checks the rules and the scrape config, runs
the rules' unit tests (deploy/prometheus/*.test.yml) and parses every dashboard query.
Without it those tests skip, except under POPSYNC_CI=1 (.ci/run), where they fail. The
rest is plain Python: every alert has a case where it fires and one where it must not,
and the rules and the dashboard use only metrics and labels popsync/runtime/metrics.py defines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from popsync.runtime import metrics
from popsync.settings import WORKER_NAMES, Settings
from popsync.topology import http_service

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules.yml"
RULE_TESTS = sorted(PROMETHEUS.glob("*.test.yml"))
SCRAPE_CONFIG = PROMETHEUS / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# Labels every popsync series gets from its scrape target.
TARGET_LABELS = {"job", "instance", "worker"}
# info: a partner's own matter (its limits), for the partner desk, never a pager.
SEVERITIES = {"info", "warning", "critical"}
# The verification service's targets: a job of their own, named as its Deployment.
VERIFICATION_JOB = http_service("verification").deployment
VERIFICATION_GROUP = "popsync-verification"
VERIFICATION_ROW = "Verification service"


def require_tool(name: str) -> str:
    """The executable's path; skip without it, but fail under POPSYNC_CI=1."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found (Debian: apt-get install prometheus)"
        if os.environ.get("POPSYNC_CI") == "1":
            pytest.fail(f"{message}; POPSYNC_CI=1 requires it")
        pytest.skip(message)
    return path


def promtool(*args: str | Path) -> str:
    result = subprocess.run(
        [require_tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def defined_metrics() -> dict[str, set[str]]:
    """Every series name popsync exports, with its label names."""
    series: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        (family,) = metric.describe()
        labels = set(metric._labelnames)
        suffixes = {
            "counter": ["_total"],
            "gauge": [""],
            "histogram": ["_bucket", "_sum", "_count"],
        }[family.type]
        for suffix in suffixes:
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every panel and template variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*), *\w+\)", variable["definition"])
            assert match, variable["definition"]
            yield f"variable {variable['name']}", match.group(1)


def as_plain_promql(expr: str) -> str:
    """A Grafana query as Prometheus would run it once the variables are filled in."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def check_names_and_labels(where: str, expr: str, recorded: set[str]) -> None:
    known = defined_metrics()
    all_labels = set().union(*known.values()) | TARGET_LABELS
    for name in re.findall(r"\bpopsync_[a-z_]+\b", expr):
        assert name in known, f"{where}: {name} is not defined in popsync/runtime/metrics.py"
    for name in re.findall(r"\bpopsync:[a-z0-9_:]+\b", expr):
        assert name in recorded, f"{where}: {name} is not recorded in rules.yml"
    for name, matchers in re.findall(r"\b(popsync_[a-z_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in known[name] | TARGET_LABELS, f"{where}: {name} has no {label}"
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        for label in filter(None, (g.strip() for g in grouping.split(","))):
            assert label in all_labels | {"stage"}, f"{where}: unknown label {label}"


# --- promtool -------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES)


def test_scrape_config_passes_promtool_check() -> None:
    promtool("check", "config", SCRAPE_CONFIG)


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no deploy/prometheus/*.test.yml"
    promtool("test", "rules", *RULE_TESTS)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, variables filled in, parses as PromQL (as a recording rule)."""
    queries = [q for path in DASHBOARDS for q in dashboard_queries(json.loads(path.read_text()))]
    rules_file = tmp_path / "dashboard.rules.yml"
    rules_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:query_{i}", "expr": as_plain_promql(expr)}
                            for i, (_, expr) in enumerate(queries)
                        ],
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    promtool("check", "rules", rules_file)


# --- the rules ------------------------------------------------------------------------


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fires: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for path in RULE_TESTS:
        spec = load(path)
        assert spec["rule_files"] == [RULES.name]
        for test in spec["tests"]:
            for case in test.get("alert_rule_test", []):
                counts = fires if case.get("exp_alerts") else quiet
                counts[case["alertname"]] = counts.get(case["alertname"], 0) + 1
    names = set(alerts())
    assert set(fires) | set(quiet) <= names, "a test names an alert that does not exist"
    assert not names - set(fires), f"never shown firing: {sorted(names - set(fires))}"
    assert not names - set(quiet), f"never shown quiet: {sorted(names - set(quiet))}"


def test_the_issue_asks_for_these_alerts() -> None:
    assert {
        "PopsyncConsumerLagGrowing",  # lag growing
        "PopsyncSourceSilent",  # a source silent for too long
        "PopsyncProvinceSilent",  # a province silent for too long
        "PopsyncDeadLetterRatioHigh",  # dead-letter ratio above a threshold
        "PopsyncConflictsSpike",  # conflicts spike
        "PopsyncWorkerDown",  # worker down
        "PopsyncWorkerUnavailable",
    } <= set(alerts())


def test_the_verification_service_has_these_alerts() -> None:
    group = [g for g in load(RULES)["groups"] if g["name"] == VERIFICATION_GROUP]
    assert {rule["alert"] for g in group for rule in g["rules"]} == {
        "PopsyncVerificationErrors",  # 5xx share of a partner route above 1%
        "PopsyncVerificationSlow",  # p99 of single requests above 250 ms
        "PopsyncVerificationPoolSaturated",
        "PopsyncVerificationAuditBacklogGrowing",
        "PopsyncVerificationAuditBacklogNearLimit",
        "PopsyncPartnerRefused",  # quota and rate rejections, info only
        "PopsyncVerificationDown",
        "PopsyncVerificationUnavailable",
    }


def _selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) of every popsync series or `up` an expression selects."""
    return re.findall(r"\b(popsync_[a-z_]+|up)\b(?:\{([^}]*)\})?", expr)


def test_verification_rules_and_panels_select_its_job_only() -> None:
    """The service's own metrics come from its job; the workers' rules never see it."""
    group = next(g for g in load(RULES)["groups"] if g["name"] == VERIFICATION_GROUP)
    for rule in group["rules"]:
        for name, matchers in _selectors(rule["expr"]):
            assert f'job="{VERIFICATION_JOB}"' in matchers, f"{rule['alert']}: {name}"
    for group in load(RULES)["groups"]:
        if group["name"] != VERIFICATION_GROUP:
            for rule in group["rules"]:
                assert VERIFICATION_JOB not in rule["expr"], rule.get("alert") or rule["record"]
                for name, matchers in _selectors(rule["expr"]):
                    if name == "up":
                        assert 'job="popsync"' in matchers, rule.get("alert") or rule["record"]
    dashboard = json.loads(DASHBOARDS[0].read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    (row,) = [
        i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == VERIFICATION_ROW
    ]
    following = [i for i, p in enumerate(panels) if p["type"] == "row" and i > row]
    shown = panels[row + 1 : following[0] if following else len(panels)]
    assert shown
    for panel in shown:
        for target in panel["targets"]:
            for name, matchers in _selectors(target["expr"]):
                assert f'job="{VERIFICATION_JOB}"' in matchers, f"{panel['title']}: {name}"


def test_verification_dashboard_row_shows_what_operators_need() -> None:
    dashboard = json.loads(DASHBOARDS[0].read_text(encoding="utf-8"))
    exprs = "\n".join(
        target["expr"]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
        if VERIFICATION_JOB in target["expr"]
    )
    for needed in (
        "sum by (endpoint) (rate(popsync_http_requests_total",  # requests/s by endpoint
        'code=~"4.."',
        'code=~"5.."',
        "histogram_quantile(0.5, sum by (endpoint, le) (rate(popsync_http_request_duration",
        "histogram_quantile(0.99, sum by (endpoint, le) (rate(popsync_http_request_duration",
        "popsync_db_pool_in_use",
        "popsync_db_pool_size",
        "popsync_audit_backlog",
        "sum by (partner, kind) (rate(popsync_partner_rejections_total",
    ):
        assert needed in exprs, needed


def test_verification_alerts_track_the_service_settings() -> None:
    """The audit alert fires at half the backlog the service refuses requests at; the
    latency alert at the histogram's 250 ms bucket, so it is exact."""
    serve = Settings().serve
    expr = alerts()["PopsyncVerificationAuditBacklogNearLimit"]["expr"]
    assert expr.endswith(f") > {serve.audit_max_backlog // 2}")
    assert "0.25" in alerts()["PopsyncVerificationSlow"]["expr"]
    assert 0.25 in metrics.HTTP_SECONDS._upper_bounds


def test_alerts_have_severity_and_explanations() -> None:
    for name, rule in alerts().items():
        assert name.startswith("Popsync"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 80, name
        assert "for" in rule, f"{name}: fires on a single evaluation"


def test_rules_use_only_defined_metrics_and_labels() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    assert all(name.startswith("popsync:") for name in recorded)
    for rule in rules():
        check_names_and_labels(rule.get("alert") or rule["record"], rule["expr"], recorded)


def test_rules_and_dashboard_cover_every_metric() -> None:
    used = RULES.read_text(encoding="utf-8") + "".join(p.read_text() for p in DASHBOARDS)
    families = {re.sub(r"(_total|_bucket|_sum|_count)$", "", n) for n in defined_metrics()}
    unused = {name for name in families if name not in used}
    assert not unused, f"metrics neither alerted on nor shown: {sorted(unused)}"


def test_dead_letter_stage_is_the_worker_name() -> None:
    """The ratio rule joins dead letters (stage) to consumed messages (worker) by name: the
    runtime labels both with the worker's name, and so do the steps' own metrics."""
    from popsync.services.synchronizer import step as synchronizer
    from popsync.services.validator import step as validator

    stages = {module.STAGE for module in (validator, synchronizer)}
    assert stages == set(WORKER_NAMES)


def test_worker_unavailable_names_every_worker_and_no_other() -> None:
    """A worker with no target at all is caught by absent(), which must name each worker:
    a missing one goes unnoticed, a removed one fires for ever."""
    expr = alerts()["PopsyncWorkerUnavailable"]["expr"]
    named = re.findall(r'absent\(up\{job="popsync", worker="([^"]+)"\}\)', expr)
    assert sorted(named) == sorted(WORKER_NAMES)


def test_dead_letter_alert_tracks_the_worker_limit() -> None:
    """The "limit near" alert fires at half of the default limits a source is judged by."""
    limit = Settings().dead_letter_limit
    expr = alerts()["PopsyncDeadLetterLimitNear"]["expr"]
    assert f"popsync_dead_letter_window_ratio) > {limit.max_ratio / 2:g}" in expr
    assert f"popsync_dead_letters_in_a_row) > {limit.max_consecutive // 2}" in expr


# --- Prometheus scrape config and Grafana ---------------------------------------------


def test_scrape_config_loads_the_rules_and_labels_workers() -> None:
    config = load(SCRAPE_CONFIG)
    assert config["rule_files"] == [RULES.name]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "popsync"]
    assert job["honor_labels"] is True  # keep the metrics' own `worker` label as is
    assert job["metrics_path"] == "/metrics"


def test_dashboards_are_well_formed() -> None:
    assert DASHBOARDS, "no dashboard in deploy/grafana/dashboards"
    datasources = load(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = datasources["datasources"]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard["uid"] and dashboard["title"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert {"datasource", "source_registry", "province", "worker"} <= set(variables)
        assert variables["datasource"]["current"]["value"] == datasource["uid"]
        panels = dashboard["panels"]
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), "panel ids must be unique"
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        titles = " ".join(panel["title"].lower() for panel in panels)
        for topic in ("throughput", "lag", "freshness map", "dead letters by reason", "latency"):
            assert topic in titles or topic.split()[0] in titles, topic
        recorded: set[str] = set()  # a dashboard must work without the recording rules
        for title, expr in dashboard_queries(dashboard):
            check_names_and_labels(f"{path.name}: {title}", expr, recorded)


def test_dashboard_shows_latency_percentiles_per_source_and_freshness_per_province() -> None:
    dashboard = json.loads(DASHBOARDS[0].read_text(encoding="utf-8"))
    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    (latency,) = [p for t, p in panels.items() if t.startswith("Event to store")]
    assert latency["repeat"] == "source_registry"
    assert {t["legendFormat"] for t in latency["targets"]} == {"p50", "p90", "p99"}
    (freshness,) = [p for t, p in panels.items() if t.startswith("Freshness map")]
    (matrix,) = [t for t in freshness["transformations"] if t["id"] == "groupingToMatrix"]
    assert matrix["options"]["rowField"] == "province"
    assert matrix["options"]["columnField"] == "source_registry"
