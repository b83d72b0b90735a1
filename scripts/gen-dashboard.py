#!/usr/bin/env python3
"""Generate the Grafana dashboard dashboards/gapwatch.json.

    python3 scripts/gen-dashboard.py           # rewrite dashboards/gapwatch.json
    python3 scripts/gen-dashboard.py --check   # exit 1 if the committed file is stale

Stdlib only. Threshold lines are read from the alert rules
(deploy/prometheus/gapwatch-rules.yml) so the dashboard and the alerts agree.
Every query here is extracted and validated by tests/ops/check_queries.py.
"""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy/prometheus/gapwatch-rules.yml"
OUT = ROOT / "dashboards/gapwatch.json"
RUNBOOK = "https://github.com/gapwatch/gapwatch/blob/main/README.md"

DS = {"type": "prometheus", "uid": "${datasource}"}
FEED = 'feed=~"$feed"'
QUEUE = 'queue=~"$queue"'
VENDOR_ERROR_STATUS = '429|5..|error|error_body'


def threshold(alert: str, pattern: str) -> float:
    """A number from the expression of an alert rule, e.g. GapwatchFeedStale's threshold."""
    text = RULES.read_text()
    start = text.find(f"- alert: {alert}\n")
    end = text.find("- alert:", start + 1)
    m = re.search(pattern, text[start:end if end > 0 else None]) if start >= 0 else None
    if not m:
        raise SystemExit(f"{RULES}: alert {alert}: no match for {pattern!r}")
    value = float(m.group(1))
    return int(value) if value.is_integer() else value


FRESHNESS_MAX = threshold("GapwatchFeedStale", r"gapwatch_feed_freshness_seconds > ([0-9.]+)")
BACKLOG_AGE_MAX = threshold("GapwatchConsumerBacklogOld", r"gapwatch_queue_oldest_message_age_seconds > ([0-9.]+)")
VENDOR_ERROR_SHARE = threshold("GapwatchVendorErrors", r"\)\s*> ([0-9.]+)")
AUDIT_LAG_MAX = threshold("GapwatchAuditBehind", r"gapwatch_audit_verified_until_timestamp_seconds > ([0-9.]+)")


# === panel builders ===

class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self):
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.newline()
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def newline(self):
        self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


L = Layout()


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t.update({"instant": True, "range": False, "format": "table"})
    else:
        t["range"] = True
    return t


def steps(limit=None, color="red"):
    s = [{"color": "green", "value": None}]
    if limit is not None:
        s.append({"color": color, "value": limit})
    return {"mode": "absolute", "steps": s}


def row(title: str) -> dict:
    L.newline()
    panel = {"type": "row", "id": L.id(), "title": title, "collapsed": False,
             "gridPos": L.place(24, 1), "panels": []}
    L.newline()
    return panel


def timeseries(title, targets, w, h, unit="short", description="", limit=None,
               stack=False, overrides=None, min_=None, bars=False):
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 20 if stack else 0,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if limit is not None else "off"},
        "axisPlacement": "auto",
    }
    defaults = {"unit": unit, "custom": custom, "thresholds": steps(limit),
                "color": {"mode": "palette-classic"}}
    if min_ is not None:
        defaults["min"] = min_
    return {
        "type": "timeseries", "id": L.id(), "title": title, "description": description,
        "datasource": DS, "gridPos": L.place(w, h), "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"], "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title, targets, w, h, unit="short", description="", limit=None, color_mode="value"):
    return {
        "type": "stat", "id": L.id(), "title": title, "description": description,
        "datasource": DS, "gridPos": L.place(w, h), "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": steps(limit),
                                     "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": color_mode, "graphMode": "none", "textMode": "value_and_name",
                    "orientation": "auto", "justifyMode": "auto"},
    }


def state_timeline(title, targets, w, h, mappings, description=""):
    return {
        "type": "state-timeline", "id": L.id(), "title": title, "description": description,
        "datasource": DS, "gridPos": L.place(w, h), "targets": targets,
        "fieldConfig": {"defaults": {"mappings": mappings, "thresholds": steps(),
                                     "color": {"mode": "thresholds"},
                                     "custom": {"fillOpacity": 80, "lineWidth": 0}},
                        "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                    "alignValue": "left", "legend": {"showLegend": True, "displayMode": "list",
                                                     "placement": "bottom"}},
    }


def bargauge(title, targets, w, h, unit="short", description=""):
    return {
        "type": "bargauge", "id": L.id(), "title": title, "description": description,
        "datasource": DS, "gridPos": L.place(w, h), "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": steps(),
                                     "color": {"mode": "palette-classic"}}, "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "basic",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "showUnfilled": True},
    }


def table(title, targets, w, h, description=""):
    return {
        "type": "table", "id": L.id(), "title": title, "description": description,
        "datasource": DS, "gridPos": L.place(w, h), "targets": targets,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
    }


def mapping(values: dict) -> list:
    return [{"type": "value", "options": {str(k): {"text": text, "color": color, "index": i}
                                          for i, (k, (text, color)) in enumerate(values.items())}}]


def color_override(regex: str, color: str) -> dict:
    return {"matcher": {"id": "byRegexp", "options": regex},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}]}


# === the dashboard ===

def panels() -> list:
    p = []

    p.append(row("Freshness"))
    active_shading = {
        "matcher": {"id": "byFrameRefID", "options": "B"},
        "properties": [
            {"id": "unit", "value": "none"},
            {"id": "min", "value": 0},
            {"id": "max", "value": 1},
            {"id": "custom.axisPlacement", "value": "hidden"},
            {"id": "custom.lineWidth", "value": 0},
            {"id": "custom.fillOpacity", "value": 12},
            {"id": "custom.lineInterpolation", "value": "stepAfter"},
            {"id": "custom.hideFrom", "value": {"legend": False, "tooltip": True, "viz": False}},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "blue"}},
        ],
    }
    p.append(timeseries(
        "Freshness vs threshold", [
            target(f"gapwatch_feed_freshness_seconds{{{FEED}}}", "{{feed}}"),
            target(f"max by (feed) (gapwatch_feed_active{{{FEED}}})", "active window {{feed}}", "B"),
        ], 16, 9, unit="s", limit=FRESHNESS_MAX, overrides=[active_shading], min_=0,
        description=(f"Seconds since the newest observed event. Dashed line: the "
                     f"GapwatchFeedStale threshold ({FRESHNESS_MAX}s); blue shading: inside the "
                     f"feed's active window. A feed that has seen nothing has no line.")))
    p.append(stat(
        "Freshness now", [target(f"gapwatch_feed_freshness_seconds{{{FEED}}}", "{{feed}}")],
        8, 9, unit="s", limit=FRESHNESS_MAX, color_mode="background"))
    p.append(state_timeline(
        "Active window", [target(f"max by (feed) (gapwatch_feed_active{{{FEED}}})", "{{feed}}")],
        8, 6, mapping({0: ("outside window", "transparent"), 1: ("active", "blue")}),
        description="When data is expected (feeds[].freshness.active). Silence outside it is not a gap."))
    p.append(timeseries(
        "Records observed /s",
        [target(f"sum by (feed) (rate(gapwatch_feed_records_observed_total{{{FEED}}}[$__rate_interval]))",
                "{{feed}}")], 8, 6, unit="short"))
    p.append(stat(
        "Newest event",
        [target(f"max by (feed) (gapwatch_feed_last_event_timestamp_seconds{{{FEED}}} > 0) * 1000", "{{feed}}")],
        8, 6, unit="dateTimeFromNow"))

    p.append(row("Gaps"))
    p.append(state_timeline(
        "Gaps (open → filling → filled)",
        [target(f"clamp_max(2 * max by (feed) (gapwatch_gap_open{{{FEED}}})"
                f" + max by (feed) (gapwatch_gap_unfilled_seconds{{{FEED}}} > bool 0), 2)", "{{feed}}")],
        24, 6, mapping({0: ("no gap / filled", "green"), 1: ("closed, filling", "orange"),
                        2: ("open", "red")}),
        description=("red: a gap is open (gapwatch_gap_open); orange: the gap closed but part of it "
                     "is still unfilled; green: nothing missing. Annotations mark detected and closed gaps.")))
    p.append(timeseries(
        "Unfilled gap time",
        [target(f"gapwatch_gap_unfilled_seconds{{{FEED}}}", "{{feed}}")], 12, 8, unit="s", min_=0))
    p.append(bargauge(
        "Gaps detected in range",
        [target(f"sum by (feed) (increase(gapwatch_gaps_detected_total{{{FEED}}}[$__range]))", "{{feed}}")],
        12, 8))

    p.append(row("Backfill"))
    p.append(timeseries(
        "Chunks by state",
        [target(f"sum by (feed, state) (gapwatch_backfill_chunks{{{FEED}}})", "{{feed}} {{state}}")],
        12, 8, stack=True, min_=0,
        overrides=[color_override(".* failed", "red"), color_override(".* done", "green"),
                   color_override(".* running", "blue"), color_override(".* pending", "yellow")]))
    p.append(timeseries(
        "Recovered records /s by outcome",
        [target(f"sum by (feed, outcome) (rate(gapwatch_backfill_records_total{{{FEED}}}[$__rate_interval]))",
                "{{feed}} {{outcome}}")],
        12, 8, stack=True, min_=0,
        overrides=[color_override(".* delivered", "green"), color_override(".* duplicate", "blue"),
                   color_override(".* rejected", "red")]))
    p.append(bargauge(
        "Recovered records in range",
        [target(f"sum by (outcome) (increase(gapwatch_backfill_records_total{{{FEED}}}[$__range]))",
                "{{outcome}}")], 12, 6))
    p.append(stat(
        "Since the last successful fill",
        [target(f"time() - max by (feed) (gapwatch_backfill_last_success_timestamp_seconds{{{FEED}}} > 0)",
                "{{feed}}")], 12, 6, unit="s"))

    p.append(row("Completeness audit"))
    p.append(timeseries(
        "Verified-until lag",
        [target(f"time() - max by (feed) (gapwatch_audit_verified_until_timestamp_seconds{{{FEED}}})",
                "{{feed}}")], 12, 8, unit="s", limit=AUDIT_LAG_MAX, min_=0,
        description=(f"Now minus the audit's watermark: every record older than it is proven "
                     f"delivered. Normal: about delay + every. Dashed line: the GapwatchAuditBehind "
                     f"threshold ({AUDIT_LAG_MAX}s).")))
    p.append(timeseries(
        "Records found missing by the audit (then delivered)",
        [target(f"sum by (feed) (increase(gapwatch_audit_records_missing_total{{{FEED}}}[$__rate_interval]))",
                "{{feed}}")], 6, 8, min_=0, bars=True,
        description="Records the vendor's API has but the destination never got (the vendor dropped them, or a fill lost them)."))
    p.append(timeseries(
        "Audit windows by outcome",
        [target(f"sum by (feed, outcome) (increase(gapwatch_audit_runs_total{{{FEED}}}[$__rate_interval]))",
                "{{feed}} {{outcome}}")],
        6, 8, min_=0, bars=True,
        overrides=[color_override(".* failed", "red"), color_override(".* ok", "green")],
        description="Audited windows: ok (the watermark moved) or failed (it stayed)."))

    p.append(row("Shape of recovered messages"))
    p.append(state_timeline(
        "Shape check verdict",
        [target(f"max by (feed) (gapwatch_shape_mismatch{{{FEED}}})", "{{feed}}")],
        12, 6, mapping({0: ("look live", "green"), 1: ("mismatch", "red")}),
        description=("The latest shape check that compared records: sampled live messages against "
                     "what a fill would send for the same records. red: they differ (alert "
                     "GapwatchShapeMismatch; `gapwatch check-shape --feed F` shows where). Empty: no "
                     "check compared anything yet.")))
    p.append(timeseries(
        "Shape checks by outcome",
        [target(f"sum by (feed, outcome) (increase(gapwatch_shape_checks_total{{{FEED}}}[$__rate_interval]))",
                "{{feed}} {{outcome}}")],
        12, 6, min_=0, bars=True,
        overrides=[color_override(".* mismatch", "red"), color_override(".* match", "green"),
                   color_override(".* unavailable", "yellow")],
        description=("unavailable: nothing compared (no live message sampled yet, the source not "
                     "reachable, or the sampled records not listed).")))

    p.append(row("Vendor API"))
    p.append(timeseries(
        "Requests /s by status",
        [target(f"sum by (feed, status) (rate(gapwatch_backfill_requests_total{{{FEED}}}[$__rate_interval]))",
                "{{feed}} {{status}}")], 8, 8, unit="reqps", stack=True, min_=0,
        overrides=[color_override(".* (429|5..|error|error_body)", "red")]))
    p.append(timeseries(
        "Request latency p50 / p99", [
            target("histogram_quantile(0.5, sum by (feed, le) (rate("
                   f"gapwatch_backfill_request_duration_seconds_bucket{{{FEED}}}[$__rate_interval])))",
                   "p50 {{feed}}"),
            target("histogram_quantile(0.99, sum by (feed, le) (rate("
                   f"gapwatch_backfill_request_duration_seconds_bucket{{{FEED}}}[$__rate_interval])))",
                   "p99 {{feed}}", "B"),
        ], 8, 8, unit="s", min_=0))
    p.append(timeseries(
        "Error share (429, 5xx, transport)",
        [target(f'sum by (feed) (rate(gapwatch_backfill_requests_total{{{FEED},status=~"{VENDOR_ERROR_STATUS}"}}[$__rate_interval]))'
                f" / sum by (feed) (rate(gapwatch_backfill_requests_total{{{FEED}}}[$__rate_interval]))",
                "{{feed}}")], 8, 8, unit="percentunit", limit=VENDOR_ERROR_SHARE, min_=0,
        description=f"Dashed line: the GapwatchVendorErrors threshold ({VENDOR_ERROR_SHARE:.0%})."))

    p.append(row("Queues"))
    p.append(timeseries(
        "Messages by state",
        [target(f"sum by (queue, state) (gapwatch_queue_messages{{{QUEUE}}})", "{{queue}} {{state}}")],
        12, 8, stack=True, min_=0))
    p.append(timeseries(
        "Oldest message age",
        [target(f"max by (queue) (gapwatch_queue_oldest_message_age_seconds{{{QUEUE}}})", "{{queue}}")],
        12, 8, unit="s", limit=BACKLOG_AGE_MAX, min_=0,
        description=f"Dashed line: the GapwatchConsumerBacklogOld threshold ({BACKLOG_AGE_MAX}s)."))

    p.append(row("Relay, AWS, gapwatch"))
    p.append(timeseries(
        "Relay /s by outcome",
        [target(f"sum by (feed, outcome) (rate(gapwatch_relay_messages_total{{{FEED}}}[$__rate_interval]))",
                "{{feed}} {{outcome}}")], 8, 8, stack=True, min_=0,
        overrides=[color_override(".* failed", "red"), color_override(".* forwarded", "green")]))
    p.append(timeseries(
        "AWS calls /s",
        [target("sum by (service, operation, outcome) (rate(gapwatch_aws_requests_total[$__rate_interval]))",
                "{{service}} {{operation}} {{outcome}}")], 10, 8, unit="reqps", stack=True, min_=0))
    p.append(table(
        "gapwatch instances", [
            target("max by (instance, version) (gapwatch_build_info)", "", "A", instant=True),
            target('max by (instance) (up{job=~".*gapwatch.*"})', "", "B", instant=True),
        ], 6, 8, description="Version per instance (gapwatch_build_info) and whether Prometheus scrapes it (up)."))
    return p


def variable_query(name, metric, label, current_all=True):
    q = f"label_values({metric}, {label})"
    return {
        "name": name, "label": name, "type": "query", "datasource": DS,
        "definition": q, "query": {"qryType": 1, "query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if current_all else {},
        "options": [], "hide": 0, "regex": "", "skipUrlSync": False,
    }


def dashboard() -> dict:
    return {
        "uid": "gapwatch",
        "title": "gapwatch",
        "description": "Feed freshness, gaps and their backfill, vendor API, queues and relay (generated by scripts/gen-dashboard.py).",
        "tags": ["gapwatch", "sqs"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [{"title": "Runbooks", "type": "link", "url": f"{RUNBOOK}#operations",
                   "targetBlank": True, "icon": "doc", "tooltip": "what each alert means and what to do"}],
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
             "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
             "type": "dashboard"},
            {"datasource": DS, "enable": True, "hide": False, "iconColor": "red", "name": "Gap detected",
             "expr": f"sum by (feed) (increase(gapwatch_gaps_detected_total{{{FEED}}}[2m])) > 0",
             "step": "2m", "titleFormat": "gap detected", "textFormat": "feed {{feed}}",
             "tagKeys": "feed", "useValueForTime": False},
            {"datasource": DS, "enable": True, "hide": False, "iconColor": "green", "name": "Gap closed",
             "expr": (f"max by (feed) (gapwatch_gap_open{{{FEED}}} offset 2m)"
                      f" - max by (feed) (gapwatch_gap_open{{{FEED}}}) > 0"),
             "step": "2m", "titleFormat": "gap closed", "textFormat": "feed {{feed}}",
             "tagKeys": "feed", "useValueForTime": False},
        ]},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [],
             "refresh": 1, "regex": "", "skipUrlSync": False},
            # gapwatch_feed_active exists for every configured feed from the start;
            # gapwatch_feed_freshness_seconds only once a feed has seen a record, so a
            # silent-since-start feed would be missing from the list. `All` is `.*` so it
            # also covers feeds that appear later.
            variable_query("feed", "gapwatch_feed_active", "feed"),
            variable_query("queue", "gapwatch_queue_messages", "queue"),
        ]},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    want = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != want:
            print(f"{OUT.relative_to(ROOT)} is stale: run scripts/gen-dashboard.py")
            return 1
        print(f"{OUT.relative_to(ROOT)} is up to date")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(want)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
