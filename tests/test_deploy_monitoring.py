"""The shipped monitoring: Prometheus alert rules, scrape config and Grafana dashboard.

Always: parse the files and check that every PromQL expression names only series the
proxy really exports (taken from ``proxy.metrics.Metrics``, not from a list kept here),
that the required alerts exist, and that the dashboard is internally consistent.
With ``promtool`` on PATH (Debian: ``apt-get install prometheus``) also: ``promtool check``
both files and unit-test the alert expressions on synthetic series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "cipa-proxy.json"
JOB = "cipa-proxy"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH (Debian: apt-get install prometheus); "
    "the alert expressions are still checked by parsing in the other tests",
)

REQUIRED_ALERTS = {
    "CipaFilterNotOperative": "critical",
    "CipaProxyDown": "critical",
    "CipaProxyNotScraped": "critical",
    "CipaRulesReloadFailing": "warning",
    "CipaAuditErrors": "warning",
    "CipaBlockRateSpike": "warning",
    "CipaBypassAttemptSpike": "warning",
    "CipaFilterErrors": "warning",
    "CipaRulesStale": "info",
}

# ---------------------------------------------------------------- PromQL names

_FUNCTIONS = """
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
days_in_month deg delta deriv double_exponential_smoothing exp floor histogram_avg
histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
histogram_sum holt_winters hour idelta increase info irate label_join label_replace
last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin
sinh sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time
stdvar_over_time sum_over_time tan tanh time timestamp vector year
"""
_AGGREGATIONS = """
avg bottomk count count_values group limit_ratio limitk max min quantile stddev stdvar
sum topk
"""
_KEYWORDS = """
and or unless by without on ignoring group_left group_right offset bool atan2 start end
inf nan
"""
PROMQL_WORDS = frozenset((_FUNCTIONS + _AGGREGATIONS + _KEYWORDS).split())

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARS = re.compile(r"\$\{[^}]*\}|\$\w+")
# A whole identifier (not part of a number such as 1e-5 or a duration such as 5m) that
# is not a function call: after the stripping above, that is a metric name or a keyword.
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_SELECTOR = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")


def metric_names(expr: str) -> list[str]:
    """Metric names an expression selects, once per selector, in order."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGES.sub("[]", text)
    text = _GROUPING.sub(r"\1", text)
    text = _GRAFANA_VARS.sub(" 0 ", text)
    return [name for name in _IDENT.findall(text) if name.lower() not in PROMQL_WORDS]


def selectors(expr: str) -> list[tuple[str, str]]:
    """``(metric, matchers)`` for every ``metric{...}`` selector in an expression."""

    def braceless(m: re.Match[str]) -> str:  # a "{" inside a string is not a selector
        return m.group(0).replace("{", "(").replace("}", ")")

    return _SELECTOR.findall(_STRINGS.sub(braceless, expr))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up == 0", ["up"]),
        ('absent(up{job="cipa-proxy"})', ["up"]),
        (
            'sum by (group, action) (rate(cipa_requests_total{group=~"$group"}[$__rate_interval]))',
            ["cipa_requests_total"],
        ),
        (
            "histogram_quantile(0.99, sum(rate(cipa_decision_seconds_bucket[5m])) by (le))",
            ["cipa_decision_seconds_bucket"],
        ),
        (
            "time() - cipa_rules_loaded_timestamp_seconds > 8 * 86400",
            ["cipa_rules_loaded_timestamp_seconds"],
        ),
        ("rate(x[1h] offset 1d) > 1e-5 and on(instance) group_left(kind) y", ["x", "y"]),
        ('label_replace(bogus_metric, "a", "$1", "b", "(.*)")', ["bogus_metric"]),
        ("cipa_filter_operative*2+bogus_total", ["cipa_filter_operative", "bogus_total"]),
    ],
)
def test_metric_name_extraction(expr: str, names: list[str]) -> None:
    assert metric_names(expr) == names


# ------------------------------------------------------- what the proxy exports


@pytest.fixture(scope="module")
def exported() -> frozenset[str]:
    """Every series name the proxy's registry exposes, read from its exposition text.

    Labelled families have no samples until a label set is used, so names are also
    derived from each family's type the way Prometheus names the series.
    """
    text = generate_latest(Metrics().registry).decode()
    names = {"up"}  # synthesised by Prometheus for every target
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "info": ("_info",),
    }
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + sfx for sfx in suffixes.get(family.type, ("",)))
    return frozenset(names)


def test_exported_names_come_from_the_code(exported: frozenset[str]) -> None:
    # Sanity: the derivation sees the documented series, including label-only families.
    for name in (
        "cipa_requests_total",
        "cipa_blocks_total",
        "cipa_decision_seconds_bucket",
        "cipa_rules_entries",
        "cipa_bypass_attempts_total",
        "process_cpu_seconds_total",
    ):
        assert name in exported
    assert "cipa_requests" not in exported  # counters are exposed with _total only


# ----------------------------------------------------------------------- alerts


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"]
    rules = []
    for group in doc["groups"]:
        assert group.get("name") and group.get("rules"), group
        rules.extend(group["rules"])
    return rules


def _alerts() -> dict[str, dict[str, Any]]:
    alerts: dict[str, dict[str, Any]] = {}
    for rule in _rules():
        assert "alert" in rule, f"only alerting rules are expected: {rule}"
        assert rule["alert"] not in alerts, f"duplicate alert {rule['alert']}"
        alerts[rule["alert"]] = rule
    return alerts


def test_required_alerts_exist_with_severity_and_text() -> None:
    alerts = _alerts()
    assert set(REQUIRED_ALERTS) <= set(alerts), set(REQUIRED_ALERTS) - set(alerts)
    for name, rule in alerts.items():
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), name
        notes = rule.get("annotations", {})
        assert notes.get("summary", "").strip(), f"{name}: summary annotation"
        assert len(notes.get("description", "").split()) >= 15, f"{name}: description"
    for name, severity in REQUIRED_ALERTS.items():
        assert alerts[name]["labels"]["severity"] == severity, name
    assert alerts["CipaFilterNotOperative"]["for"] == "1m"
    assert alerts["CipaProxyDown"]["for"] == "2m"
    assert alerts["CipaRulesReloadFailing"]["for"] == "10m"
    assert "absent(" in alerts["CipaProxyNotScraped"]["expr"]


def test_alert_expressions_use_only_exported_metrics(exported: frozenset[str]) -> None:
    for name, rule in _alerts().items():
        expr = rule["expr"]
        used = metric_names(expr)
        assert used, f"{name}: no metric in {expr!r}"
        unknown = sorted(set(used) - exported)
        assert not unknown, f"{name}: {unknown} are not exported by the proxy"
        found = selectors(expr)
        assert len(found) == len(used), f"{name}: every selector needs {{job=...}}: {expr!r}"
        for metric, matchers in found:
            assert f'job="{JOB}"' in matchers, f"{name}: {metric} without job={JOB}"


def test_example_scrape_config() -> None:
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert "alerts.yml" in cfg["rule_files"]
    for rule_file in cfg["rule_files"]:
        assert (PROMETHEUS_YML.parent / rule_file).is_file(), rule_file
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    job = jobs[JOB]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(":9464") for t in targets), targets


# -------------------------------------------------------------------- dashboard


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows, collapsed or not


def _dashboard_exprs(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query the dashboard runs."""
    for panel in _panels(dash["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('title')!r}", target["expr"]
    for ann in dash.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            yield f"annotation {ann['name']!r}", ann["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        yield f"variable {var['name']!r}", m.group(1) if m else query


def test_dashboard_structure() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"instance", "group"} <= set(variables)
    panels = list(_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = set()
    for panel in panels:
        assert panel.get("title", "").strip(), f"panel {panel['id']} has no title"
        assert "gridPos" in panel, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"empty query in {panel['title']!r}"
        titles.add(panel["title"].lower())
    for wanted in (
        "filter operative",
        "requests/s by group and action",
        "blocks/s by category",
        "blocks/s by group",
        "top blocked categories",
        "decision latency",
        "request duration p95",
        "tls connections",
        "rule reloads",
        "time since rules loaded",
        "rule entries by category",
        "audit records",
        "audit errors",
        "safesearch",
        "bypass attempts",
        "clients refused",
        "filter errors",
        "cpu",
        "resident memory",
    ):
        assert any(wanted in t for t in titles), f"no panel about {wanted!r}"
    operative = next(p for p in panels if p["title"] == "Filter operative")
    assert operative["type"] == "stat"
    steps = operative["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0]["color"] == "red" and steps[1] == {"color": "green", "value": 1}


def test_dashboard_datasource_references_are_consistent() -> None:
    dash = _dashboard()
    names = [v["name"] for v in dash["templating"]["list"] if v["type"] == "datasource"]
    names += [i["name"] for i in dash.get("__inputs", []) if i.get("type") == "datasource"]
    assert len(names) == 1, f"exactly one datasource variable or input expected: {names}"
    expected = {"type": "prometheus", "uid": f"${{{names[0]}}}"}
    var = next((v for v in dash["templating"]["list"] if v["name"] == names[0]), None)
    if var is not None:
        assert var["query"] == "prometheus"
    seen = []
    for panel in _panels(dash["panels"]):
        if panel["type"] == "row":
            continue
        seen.append((panel["title"], panel.get("datasource")))
        seen += [(panel["title"], t.get("datasource", expected)) for t in panel["targets"]]
    seen += [
        (v["name"], v["datasource"]) for v in dash["templating"]["list"] if v["type"] == "query"
    ]
    seen += [
        (a["name"], a["datasource"]) for a in dash["annotations"]["list"] if not a.get("builtIn")
    ]
    wrong = [(where, ds) for where, ds in seen if ds != expected]
    assert not wrong, f"datasource should be {expected}: {wrong}"


def test_dashboard_queries_use_only_exported_metrics(exported: frozenset[str]) -> None:
    dash = _dashboard()
    for where, expr in _dashboard_exprs(dash):
        used = metric_names(expr)
        assert used, f"{where}: no metric in {expr!r}"
        unknown = sorted(set(used) - exported)
        assert not unknown, f"{where}: {unknown} are not exported by the proxy"
        found = selectors(expr)
        assert len(found) == len(used), f"{where}: every selector needs {{job=...}}: {expr!r}"
        for metric, matchers in found:
            assert f'job="{JOB}"' in matchers, f"{where}: {metric} without job={JOB}"
            if not where.startswith("variable 'instance'"):
                assert 'instance=~"$instance"' in matchers, f"{where}: {metric} ignores $instance"


# --------------------------------------------------------------------- promtool


def _promtool(*args: str, cwd: Path = ROOT) -> None:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


@needs_promtool
def test_promtool_check_rules() -> None:
    _promtool("check", "rules", str(ALERTS.relative_to(ROOT)))


@needs_promtool
def test_promtool_check_config() -> None:
    _promtool("check", "config", str(PROMETHEUS_YML.relative_to(ROOT)))


_GRAFANA_SAMPLE_VALUES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$group": ".*",
}


@needs_promtool
def test_promtool_parses_dashboard_queries(tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables filled in, is valid PromQL."""
    rules = []
    for n, (where, expr) in enumerate(_dashboard_exprs(_dashboard())):
        for var, value in _GRAFANA_SAMPLE_VALUES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    doc = {"groups": [{"name": "dashboard", "rules": rules}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    _promtool("check", "rules", "dashboard.yml", cwd=tmp_path)


DAY = 24 * 60  # minutes
WEEK = 7 * DAY
P1 = {"job": JOB, "instance": "proxy-1:9464"}
P2 = {"job": JOB, "instance": "proxy-2:9464"}


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _counter(*segments: tuple[int, int], step: int = 1) -> str:
    """promtool values for a counter from 0: (minutes, increase per minute) segments,
    sampled every ``step`` minutes."""
    parts, value = ["0"], 0
    for minutes, per_minute in segments:
        assert minutes % step == 0
        inc = per_minute * step
        parts.append(f"{value + inc}+{inc}x{minutes // step - 1}")
        value += per_minute * minutes
    return " ".join(parts)


def _case(
    series: list[dict[str, str]],
    alert: str,
    *checks: tuple[int, list[dict[str, str]]],
    step: int = 1,
) -> dict[str, Any]:
    """One promtool test group: at each (minute, [labels of firing alerts]) check.

    ``step`` (minutes) is both the sample interval and the rule evaluation interval:
    long histories use a coarse step to keep promtool fast.
    """
    return {
        "interval": f"{step}m",
        "input_series": series,
        "alert_rule_test": [
            {
                "eval_time": f"{minute}m",
                "alertname": alert,
                "exp_alerts": [{"exp_labels": labels} for labels in firing],
            }
            for minute, firing in checks
        ],
    }


def _unit_tests() -> list[dict[str, Any]]:
    crit, warn = {"severity": "critical"}, {"severity": "warning"}
    blocks = {**P1, "group": "students", "category": "adult"}
    return [
        _case(
            [
                _series("cipa_filter_operative", P1, "1 1 0x10"),
                _series("cipa_filter_operative", P2, "1x12"),
            ],
            "CipaFilterNotOperative",
            (1, []),
            (2, []),  # pending: for 1m
            (5, [{**crit, "instance": P1["instance"]}]),
        ),
        _case(
            [_series("up", P1, "1 1 0x10"), _series("up", P2, "1x12")],
            "CipaProxyDown",
            (3, []),
            (5, [{**crit, **P1}]),
        ),
        _case(
            [_series("up", {"job": "prometheus", "instance": "localhost:9090"}, "1x10")],
            "CipaProxyNotScraped",
            (3, []),
            (10, [{**crit, "job": JOB}]),
        ),
        _case(
            [_series("up", P1, "1x10"), _series("cipa_filter_operative", P1, "1x10")],
            "CipaProxyNotScraped",
            (10, []),
        ),
        _case(
            [_series("cipa_rules_reload_error", P1, "0 0 1x15 0x3")],
            "CipaRulesReloadFailing",
            (8, []),
            (13, [{**warn, "instance": P1["instance"]}]),
            (19, []),  # a good reload clears it
        ),
        _case(
            [
                _series("cipa_rules_loaded_timestamp_seconds", P1, "1x200"),
                _series("cipa_rules_loaded_timestamp_seconds", P2, "0x200"),  # never loaded
            ],
            "CipaRulesStale",
            (190 * 60, []),
            (195 * 60, [{"severity": "info", **P1}]),
            step=60,
        ),
        _case(
            [_series("cipa_audit_errors_total", P1, "0 0 0 1x10")],
            "CipaAuditErrors",
            (2, []),
            (4, [{**warn, **P1}]),
            (12, []),
        ),
        _case(
            [_series("cipa_filter_errors_total", P1, "0x3 1x20")],
            "CipaFilterErrors",
            (6, []),
            (10, [{**warn, **P1}]),
            (20, []),
        ),
        # 2/s for a week and an hour, then 10/s: more than 3x the usual rate.
        _case(
            [_series("cipa_blocks_total", blocks, _counter((WEEK + 60, 120), (30, 600), step=5))],
            "CipaBlockRateSpike",
            (WEEK + 60 + 5, []),
            (WEEK + 60 + 30, [warn]),
            step=5,
        ),
        # Quiet yesterday (a Sunday) but as busy this hour last week (a Monday): no alert.
        _case(
            [
                _series(
                    "cipa_blocks_total",
                    blocks,
                    _counter((90, 600), (WEEK - 60, 60), (30, 600), step=5),
                )
            ],
            "CipaBlockRateSpike",
            (WEEK + 60, []),
            step=5,
        ),
        # Sharp rise but below the floor of 1 block/s.
        _case(
            [_series("cipa_blocks_total", blocks, _counter((DAY + 60, 6), (30, 54), step=5))],
            "CipaBlockRateSpike",
            (DAY + 60 + 30, []),
            step=5,
        ),
        # No history yet (a new installation): no baseline, no alert.
        _case(
            [_series("cipa_blocks_total", blocks, _counter((60, 600)))],
            "CipaBlockRateSpike",
            (60, []),
        ),
        # None yesterday, then 5 VPN attempts a minute.
        _case(
            [
                _series(
                    "cipa_bypass_attempts_total",
                    {**P1, "kind": "connect_port"},
                    _counter((DAY + 60, 0), (20, 5), step=5),
                ),
                _series(
                    "cipa_bypass_attempts_total",
                    {**P1, "kind": "sni_mismatch"},
                    _counter((DAY + 80, 1), step=5),
                ),
            ],
            "CipaBypassAttemptSpike",
            (DAY + 60 + 5, []),
            (DAY + 60 + 20, [{**warn, "kind": "connect_port"}]),
            step=5,
        ),
        # A kind never seen before counts as a zero baseline.
        _case(
            [
                _series(
                    "cipa_bypass_attempts_total", {**P1, "kind": "host_mismatch"}, _counter((25, 5))
                )
            ],
            "CipaBypassAttemptSpike",
            (25, [{**warn, "kind": "host_mismatch"}]),
        ),
        # The same rate as yesterday is not a spike.
        _case(
            [
                _series(
                    "cipa_bypass_attempts_total",
                    {**P1, "kind": "connect_port"},
                    _counter((DAY + 80, 5), step=5),
                )
            ],
            "CipaBypassAttemptSpike",
            (DAY + 80, []),
            step=5,
        ),
    ]


@needs_promtool
def test_promtool_alert_unit_tests(tmp_path: Path) -> None:
    """The expressions fire (and stay quiet) as intended on synthetic series.

    Annotations are dropped from the copy under test so that rewording them needs no
    test change; ``promtool check rules`` above validates their templates.
    """
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    # One file per case (promtool's evaluation interval is per file), run concurrently:
    # the week-long histories are what takes time.
    procs = []
    for n, case in enumerate(_unit_tests()):
        tests = {"rule_files": ["rules.yml"], "evaluation_interval": case["interval"]}
        (tmp_path / f"test-{n}.yml").write_text(
            yaml.safe_dump({**tests, "tests": [case]}, sort_keys=False)
        )
        cmd = [str(PROMTOOL), "test", "rules", f"test-{n}.yml"]
        procs.append((case, subprocess.Popen(cmd, cwd=tmp_path, stdout=PIPE, stderr=STDOUT)))
    failures = []
    for case, proc in procs:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failures.append(f"{case['alert_rule_test'][0]['alertname']}:\n{out.decode()}")
    assert not failures, "\n".join(failures)
