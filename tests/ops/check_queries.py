#!/usr/bin/env python3
"""Check every PromQL query that gapwatch ships: alert rules and the Grafana dashboard.

    python3 tests/ops/check_queries.py                       # list queries and metric names
    python3 tests/ops/check_queries.py --promtool            # + parse each query with promtool
    python3 tests/ops/check_queries.py --design ../shared/DESIGN.md --design README.md
                                                             # + names/labels against the contract
                                                             #   and the metrics the README adds to it
    python3 tests/ops/check_queries.py --metrics-url http://127.0.0.1:9464/metrics
                                                             # + families a live gapwatch exports
    python3 tests/ops/check_queries.py --metrics-file exposition.txt   # same, from a file

Always checked: deploy/kustomize/base/prometheusrule.yaml carries exactly the rules
of deploy/prometheus/gapwatch-rules.yml, and no dashboard query keeps an unknown
Grafana variable. Exits 1 on any failure. Python 3 standard library only.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/gapwatch-rules.yml"
PROMETHEUS_RULE = ROOT / "deploy/kustomize/base/prometheusrule.yaml"
DASHBOARD = ROOT / "dashboards/gapwatch.json"

# Grafana's built-in variables, replaced by a plausible value before parsing.
GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "6h",
    "__range_s": "21600",
    "__range_ms": "21600000",
    "__interval_ms": "60000",
}
# Labels Prometheus adds to every scraped series (target labels).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "service"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Query:
    def __init__(self, source: str, expr: str, promql: str | None = None):
        self.source = source  # where it comes from, for messages
        self.expr = expr  # as written
        self.promql = promql if promql is not None else expr  # with variables substituted


# === extraction: rules file (a YAML subset: the style our rules file is written in) ===

def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"') and value.endswith('"'):
        return json.loads(value)
    if value.startswith("'") and value.endswith("'"):
        return value[1:-1].replace("''", "'")
    return value


def yaml_scalars(text: str, key: str) -> list[tuple[int, str]]:
    """(line number, value) of every `key:` in a YAML file: plain, quoted or block scalars."""
    lines = text.splitlines()
    out = []
    pat = re.compile(rf"^(\s*)(?:- )?{re.escape(key)}:\s*(.*?)\s*$")
    i = 0
    while i < len(lines):
        m = pat.match(lines[i])
        if not m:
            i += 1
            continue
        indent, value = len(m.group(1)), m.group(2)
        start = i
        i += 1
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            width = min((len(b) - len(b.lstrip()) for b in block if b.strip()), default=0)
            sep = "\n" if value[0] == "|" else " "
            out.append((start + 1, sep.join(b[width:] for b in block)))
        else:
            # a plain scalar may continue on more indented lines
            cont = [value]
            while (i < len(lines) and lines[i].strip() and not value[:1] in ('"', "'")
                   and len(lines[i]) - len(lines[i].lstrip()) > indent
                   and not re.match(r"^\s*(- )?[A-Za-z_]+:", lines[i])):
                cont.append(lines[i].strip())
                i += 1
            out.append((start + 1, _unquote(" ".join(cont))))
    return out


def rule_queries(path: pathlib.Path) -> tuple[list[Query], list[Query]]:
    """The rule expressions, and the queries built inside annotation templates."""
    text = path.read_text()
    names = yaml_scalars(text, "alert") + yaml_scalars(text, "record")
    exprs = yaml_scalars(text, "expr")
    rel_ = rel(path)
    queries = []
    for line, expr in exprs:
        owner = max((n for n in names if n[0] < line), default=(0, "?"))[1]
        queries.append(Query(f"{rel_}:{line} {owner}", expr))
    # {{ with printf "metric{a=%q}" $labels.a | query }} in annotations
    templates = []
    for m in re.finditer(r'printf\s+("(?:[^"\\]|\\.)*")', text):
        line = text.count("\n", 0, m.start()) + 1
        owner = max((n for n in names if n[0] < line), default=(0, "?"))[1]
        go = json.loads(m.group(1))
        templates.append(Query(f"{rel_}:{line} {owner} (annotation template)", go,
                               re.sub(r"%[qsv]", lambda t: '"x"' if t.group() == "%q" else "x", go)))
    try:  # a real YAML parser, when there is one, must see the same expressions
        import yaml  # type: ignore
    except ImportError:
        return queries, templates
    parsed = [r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    mine = [q.expr for q in queries]
    if [norm(e) for e in parsed] != [norm(e) for e in mine]:
        fail(f"{rel_}: the built-in YAML reader disagrees with PyYAML on the expressions")
    return queries, templates


def rel(path: pathlib.Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def norm(expr: str) -> str:
    return " ".join(str(expr).split())


# === extraction: Grafana dashboard ===

def dashboard_queries(path: pathlib.Path) -> list[Query]:
    dash = json.loads(path.read_text())
    rel_ = rel(path)
    variables = {}
    queries = []
    for var in dash.get("templating", {}).get("list", []):
        name = var["name"]
        if var.get("type") == "datasource":
            continue
        if var.get("type") in ("custom", "constant", "textbox"):
            value = var.get("query", "")
            variables[name] = value.split(",")[0].strip() if var.get("type") == "custom" else value
            continue
        variables[name] = var.get("allValue") or ".*"
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q)
        if m:
            queries.append(Query(f"{rel_} variable {name}", q, f"group by ({m.group(2)}) ({m.group(1)})"))
        elif (m := re.fullmatch(r"\s*query_result\((.*)\)\s*", q, re.S)):
            queries.append(Query(f"{rel_} variable {name}", q, m.group(1)))
        elif q.strip() and not re.fullmatch(r"\s*label_values\(\s*[A-Za-z_]\w*\s*\)\s*|\s*label_names\(\)\s*", q):
            fail(f"{rel_} variable {name}: unsupported variable query {q!r}")

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or where
            if isinstance(node.get("expr"), str) and node["expr"].strip():
                ref = node.get("refId", "")
                queries.append(Query(f"{rel_} {title!r} {ref}".rstrip(), node["expr"]))
            for k, v in node.items():
                if k != "templating":
                    walk(v, title if k in ("panels", "targets", "list", "target") else where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk({k: v for k, v in dash.items() if k != "templating"}, "dashboard")
    for q in queries:
        if q.promql is q.expr:
            q.promql = substitute(q.expr, variables, q.source)
    return queries


def substitute(expr: str, variables: dict, source: str) -> str:
    values = dict(GRAFANA_BUILTINS, **variables)

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            fail(f"{source}: unknown Grafana variable ${name} in {expr!r}")
            return m.group(0)
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


# === metric names and labels ===

def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def metric_names(expr: str) -> set[str]:
    bare = strip_strings(expr)
    names = set(re.findall(r"\bgapwatch_[A-Za-z0-9_:]*", bare))
    if re.search(r"(?<![\w.])up\s*(\{|\[|\)|$|\s(?!\())", bare):
        names.add("up")
    return names


def family(name: str, design: dict | None) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and (design is None and suffix == "_bucket"
                                      or design is not None and design.get(base, {}).get("type") == "histogram"):
            return base
    return name


def selectors(expr: str):
    """(metric, [label names]) of every `metric{...}` selector."""
    for m in re.finditer(r"\b(gapwatch_[A-Za-z0-9_:]*|up)\s*\{((?:[^}\"]|\"(?:[^\"\\]|\\.)*\")*)\}", expr):
        labels = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", strip_strings(m.group(2)))
        yield m.group(1), labels


def groupings(expr: str):
    """(clause labels, inner expression) of every `by (...) (inner)` aggregation."""
    bare = strip_strings(expr)
    for m in re.finditer(r"\bby\s*\(([^)]*)\)\s*\(", bare):
        depth, i = 1, m.end()
        while i < len(bare) and depth:
            depth += {"(": 1, ")": -1}.get(bare[i], 0)
            i += 1
        labels = [label.strip() for label in m.group(1).split(",") if label.strip()]
        yield labels, bare[m.end(): i - 1]


def read_design(path: pathlib.Path) -> dict:
    """Metric table of DESIGN.md: name -> {type, labels}."""
    design = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\|\s*`(gapwatch_\w+)`\s*\|\s*([^|]+?)\s*\|\s*([^|]*?)\s*\|", line)
        if m:
            kind = m.group(2).split()[0]
            # "source (`queue`, `report`), reason": notes in parentheses are not labels
            column = re.sub(r"\([^)]*\)", "", m.group(3))
            labels = {re.split(r"[=\s]", part.strip())[0] for part in column.split(",") if part.strip()}
            design[m.group(1)] = {"type": kind, "labels": labels}
    if not design:
        fail(f"{path}: no metric table found")
    return design


def read_designs(paths: list[pathlib.Path]) -> dict:
    """The first table is the contract; later ones may add families, never
    change a contract family's type or drop one of its labels."""
    design = read_design(paths[0])
    for path in paths[1:]:
        for name, fam in read_design(path).items():
            known = design.get(name)
            if known is None:
                design[name] = fam
            elif known["type"] != fam["type"] or not known["labels"] <= fam["labels"]:
                fail(f"{path}: {name} is documented as {fam['type']} {sorted(fam['labels'])}, "
                     f"the contract says {known['type']} {sorted(known['labels'])}")
    return design


# === checks ===

FAILURES: list[str] = []


def fail(message: str):
    FAILURES.append(message)
    print(f"FAIL {message}")


def check_prometheus_rule():
    """The PrometheusRule's spec is the rules file from `groups:` on, indented by two."""
    rules = RULES.read_text().splitlines()
    want = rules[next(i for i, l in enumerate(rules) if l.startswith("groups:")):]
    lines = PROMETHEUS_RULE.read_text().splitlines()
    try:
        spec = lines.index("spec:")
    except ValueError:
        fail(f"{rel(PROMETHEUS_RULE)}: no top-level spec:")
        return
    got = [l[2:] if l.startswith("  ") else l for l in lines[spec + 1:]]
    if any(l.strip() and not l.startswith("  ") for l in lines[spec + 1:]):
        fail(f"{rel(PROMETHEUS_RULE)}: a top-level key follows spec:")
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        fail(f"{rel(PROMETHEUS_RULE)} differs from {rel(RULES)} "
             f"at rules line {at + 1 + len(rules) - len(want)}: "
             f"run deploy/prometheus/gen-prometheusrule.py")
        return
    try:
        import yaml  # type: ignore
    except ImportError:
        print(f"ok   PrometheusRule spec == rules file ({len(want)} lines, text)")
        return
    doc = yaml.safe_load(PROMETHEUS_RULE.read_text())
    if doc.get("kind") != "PrometheusRule" or doc["spec"] != yaml.safe_load(RULES.read_text()):
        fail(f"{rel(PROMETHEUS_RULE)}: parsed spec differs from the rules file")
        return
    print(f"ok   PrometheusRule spec == rules file ({len(want)} lines, text and parsed)")


def check_promtool(queries: list[Query]):
    promtool = shutil.which("promtool")
    if not promtool:
        fail("--promtool: promtool not found (apt-get install -y prometheus)")
        return
    run = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"promtool check rules {rel(RULES)}:\n{run.stdout}{run.stderr}")

    def check(batch: list[Query]) -> subprocess.CompletedProcess:
        doc = {"groups": [{"name": "gapwatch-query-check", "rules": [
            {"record": f"gapwatch_check:query_{i}", "expr": q.promql} for i, q in enumerate(batch)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            json.dump(doc, f)  # JSON is YAML
        try:
            return subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
        finally:
            pathlib.Path(f.name).unlink()

    if check(queries).returncode == 0:
        print(f"ok   promtool parsed all {len(queries)} queries")
        return
    for q in queries:  # find the culprits
        res = check([q])
        if res.returncode != 0:
            detail = " ".join((res.stdout + res.stderr).split())
            fail(f"{q.source}: promtool rejects {q.promql!r}: {detail}")


def check_design(queries: list[Query], design: dict):
    bad = 0
    for q in queries:
        for name in sorted(metric_names(q.promql)):
            fam = family(name, design)
            if name != "up" and fam not in design:
                fail(f"{q.source}: {name} is not in DESIGN.md's metric table (nor in the README's)")
                bad += 1
        for metric, labels in selectors(q.promql):
            if metric == "up":
                continue
            fam = family(metric, design)
            if fam not in design:
                continue  # reported above
            allowed = design[fam]["labels"] | TARGET_LABELS
            allowed |= {"le"} if metric.endswith("_bucket") else set()
            for label in labels:
                if label not in allowed:
                    fail(f"{q.source}: {metric} has no label {label!r} (DESIGN.md: {', '.join(sorted(design[fam]['labels']))})")
                    bad += 1
        for labels, inner in groupings(q.promql):
            fams = {family(n, design) for n in metric_names(inner)} - {"up"}
            if not fams or not all(f in design for f in fams):
                continue
            allowed = set().union(*(design[f]["labels"] for f in fams)) | TARGET_LABELS
            allowed |= {"le"} if any(design[f]["type"] == "histogram" for f in fams) else set()
            for label in labels:
                if label not in allowed:
                    fail(f"{q.source}: groups by {label!r}, which {', '.join(sorted(fams))} do not carry")
                    bad += 1
    if not bad:
        print(f"ok   every metric and label is in DESIGN.md's table ({len(design)} families there)")


def exported_families(text: str) -> dict[str, str]:
    families = {}
    for line in text.splitlines():
        m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
        if m:
            families[m.group(1)] = m.group(2)
    return families


def check_exported(referenced: dict[str, set[str]], exposition: str, origin: str):
    families = exported_families(exposition)
    if not families:
        fail(f"{origin}: no `# TYPE` line at all: is this a Prometheus /metrics page?")
        return
    missing = []
    for fam in sorted(referenced):
        if fam == "up":
            continue
        kind = families.get(fam)
        # OpenMetrics names a counter family without its _total suffix
        if kind is None and fam.endswith("_total") and families.get(fam[: -len("_total")]) == "counter":
            kind = "counter"
        if kind is None:
            missing.append(fam)
            fail(f"{origin} exports no family {fam} (used by: {', '.join(sorted(referenced[fam]))})")
    unused = sorted(f for f in families if f.startswith("gapwatch_") and f not in referenced
                    and f + "_total" not in referenced)
    print(f"{'ok  ' if not missing else 'FAIL'} {len(referenced) - ('up' in referenced) - len(missing)}"
          f"/{len(referenced) - ('up' in referenced)} referenced families exported by {origin}")
    if unused:
        print(f"info exported but not used by rules or dashboard: {', '.join(unused)}")


def main() -> int:
    global RULES, DASHBOARD, PROMETHEUS_RULE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--promtool", action="store_true", help="parse every query with promtool")
    ap.add_argument("--design", type=pathlib.Path, action="append",
                    help="DESIGN.md: check names and labels against its metric table; given again (README.md), "
                         "a table of the metrics added beyond the contract (a family in both must agree)")
    ap.add_argument("--metrics-url", help="a live gapwatch /metrics URL: every referenced family must be exported")
    ap.add_argument("--metrics-file", type=pathlib.Path, help="like --metrics-url, from a saved exposition")
    ap.add_argument("--quiet", action="store_true", help="do not list the queries")
    ap.add_argument("--rules", type=pathlib.Path, default=RULES, help=argparse.SUPPRESS)
    ap.add_argument("--dashboard", type=pathlib.Path, default=DASHBOARD, help=argparse.SUPPRESS)
    ap.add_argument("--prometheus-rule", type=pathlib.Path, default=PROMETHEUS_RULE, help=argparse.SUPPRESS)
    args = ap.parse_args()
    # other inputs: the self-test in scripts/check-ops.sh feeds broken copies
    RULES, DASHBOARD, PROMETHEUS_RULE = (args.rules.resolve(), args.dashboard.resolve(),
                                         args.prometheus_rule.resolve())

    rules, templates = rule_queries(RULES)
    dash = dashboard_queries(DASHBOARD)
    queries = rules + templates + dash
    design = read_designs(args.design) if args.design else None

    referenced: dict[str, set[str]] = {}
    for q in queries:
        for name in metric_names(q.promql):
            referenced.setdefault(family(name, design), set()).add(
                "rules" if q in rules or q in templates else "dashboard")

    if not args.quiet:
        print(f"== {len(rules)} rule expressions, {len(templates)} annotation queries, "
              f"{len(dash)} dashboard queries")
        for q in queries:
            print(f"-- {q.source}\n   {norm(q.promql)}")
    print(f"== {len(referenced)} metric families referenced")
    for fam in sorted(referenced):
        print(f"   {fam:50} {' + '.join(sorted(referenced[fam]))}")

    check_prometheus_rule()
    if args.promtool:
        check_promtool(queries)
    if design is not None:
        check_design(queries, design)
    if args.metrics_file:
        check_exported(referenced, args.metrics_file.read_text(), str(args.metrics_file))
    if args.metrics_url:
        try:
            with urllib.request.urlopen(args.metrics_url, timeout=10) as resp:
                body = resp.read().decode()
        except OSError as e:
            fail(f"{args.metrics_url}: {e}")
        else:
            check_exported(referenced, body, args.metrics_url)

    if FAILURES:
        print(f"check_queries: {len(FAILURES)} failure(s)")
        return 1
    print("check_queries: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
