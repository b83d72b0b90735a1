#!/usr/bin/env python3
"""Every alert's runbook_url lands on that alert's runbook in the README.

    python3 tests/ops/check_runbooks.py [--readme README.md] [--rules FILE ...]

For every alert rule in deploy/prometheus/gapwatch-rules.yml and in every
PrometheusRule under deploy/kustomize/ (or the --rules files given):
- runbook_url is `<repository>/blob/main/README.md#<anchor>`;
- <anchor> is the anchor of exactly one README heading, computed as GitHub renders
  it: inline markup dropped, lowercase, punctuation stripped, spaces -> '-',
  repeated headings suffixed -1, -2, ... in document order;
- that heading is `Alert: <alertname>`, it is the only heading naming the alert,
  and its section is that rule's runbook: it opens with `*<severity> —` and
  states the rule's `for: <duration>`.
Headings inside fenced code blocks are not headings. Needs PyYAML. Exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import sys
import unicodedata

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/gapwatch-rules.yml"
KUSTOMIZE = ROOT / "deploy/kustomize"
README_URL = "https://github.com/gapwatch/gapwatch/blob/main/README.md#"


def rel(p: pathlib.Path) -> str:
    p = p.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


# === GitHub's heading anchors ===

def rendered_text(heading: str) -> str:
    """The text GitHub renders for a heading's inline Markdown."""
    text = re.sub(r"\s+#+\s*$", "", heading.strip())  # closing hashes
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    # Code spans keep their content verbatim; emphasis markers outside them vanish.
    parts = re.split(r"(`+)(.+?)\1", text)
    out = []
    for i, part in enumerate(parts):
        kind = i % 3
        if kind == 0:
            out.append(re.sub(r"(\*+|\b_+|_+\b)", "", part))
        elif kind == 2:
            out.append(part)
    return "".join(out)


def slug(text: str) -> str:
    """github-slugger: lowercase, keep letters, marks, numbers, '_', '-' and spaces; spaces -> '-'."""
    kept = "".join(
        ch for ch in text.lower()
        if ch in " -_" or unicodedata.category(ch)[0] in ("L", "M", "N")
    )
    return kept.replace(" ", "-")


def headings(markdown: str) -> list[dict]:
    """ATX headings outside fenced code, with GitHub's anchor and the section body."""
    found = []
    fence = None
    lines = markdown.splitlines()
    for n, line in enumerate(lines, 1):
        m = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if fence is not None:
            continue
        m = re.match(r"^ {0,3}(#{1,6})(?:[ \t]+(.*))?$", line)
        if m:
            found.append({"line": n, "level": len(m.group(1)), "source": line,
                          "text": rendered_text(m.group(2) or "")})
    seen: dict[str, int] = {}
    for i, h in enumerate(found):
        base = slug(h["text"])
        anchor = base
        while anchor in seen:  # GitHub: base, base-1, base-2, ... skipping taken ones
            seen[base] += 1
            anchor = f"{base}-{seen[base]}"
        seen.setdefault(base, 0)
        seen.setdefault(anchor, 0)
        h["anchor"] = anchor
        end = found[i + 1]["line"] - 1 if i + 1 < len(found) else len(lines)
        h["body"] = "\n".join(lines[h["line"]:end]).strip()
    return found


# === alert rules ===

def alert_rules(paths: list[pathlib.Path]) -> list[dict]:
    rules = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            groups = doc.get("spec", {}).get("groups") if doc.get("kind") == "PrometheusRule" else doc.get("groups")
            for group in groups or []:
                for rule in group.get("rules", []):
                    if "alert" in rule:
                        rules.append({**rule, "source": rel(path)})
    return rules


def default_rule_files() -> list[pathlib.Path]:
    files = [RULES]
    for p in sorted(KUSTOMIZE.rglob("*.yaml")):
        if any(d and d.get("kind") == "PrometheusRule" for d in yaml.safe_load_all(p.read_text())):
            files.append(p)
    return files


def check(readme: pathlib.Path, rule_files: list[pathlib.Path]) -> list[str]:
    problems = []
    hs = headings(readme.read_text())
    by_anchor = {h["anchor"]: h for h in hs}
    rules = alert_rules(rule_files)
    if not rules:
        return [f"no alert rules in {', '.join(rel(p) for p in rule_files)}"]
    for rule in rules:
        name = rule["alert"]
        where = f"{rule['source']}: {name}"
        url = rule.get("annotations", {}).get("runbook_url", "")
        if not url.startswith(README_URL):
            problems.append(f"{where}: runbook_url {url!r} is not {README_URL}<anchor>")
            continue
        anchor = url[len(README_URL):]
        naming = [h for h in hs if re.search(rf"\b{re.escape(name)}\b", h["text"])]
        if len(naming) != 1:
            problems.append(f"{where}: {len(naming)} README headings name the alert, expected one: "
                            + "; ".join(f"line {h['line']} {h['source']!r} (#{h['anchor']})" for h in naming))
        h = by_anchor.get(anchor)
        if h is None:
            problems.append(f"{where}: #{anchor} matches no README heading (anchors: "
                            + ", ".join(sorted(a for a in by_anchor if a.startswith("alert"))) + ")")
            continue
        at = f"{where}: #{anchor} is README line {h['line']} {h['source']!r}"
        if h["text"].strip() != f"Alert: {name}":
            problems.append(f"{at}, not the heading `Alert: {name}`")
        severity = rule.get("labels", {}).get("severity", "")
        if not h["body"].startswith(f"*{severity} —"):
            problems.append(f"{at}: its section does not open with `*{severity} —` (the rule's severity): "
                            f"{h['body'][:60]!r}")
        duration = rule.get("for", "")
        if duration and not re.search(rf"\bfor {re.escape(duration)}\b", h["body"]):
            problems.append(f"{at}: its section does not state the rule's `for {duration}`")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=pathlib.Path, default=ROOT / "README.md")
    ap.add_argument("--rules", type=pathlib.Path, action="append",
                    help="rules file or PrometheusRule manifest (default: the shipped ones)")
    args = ap.parse_args()
    files = args.rules or default_rule_files()
    problems = check(args.readme, files)
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        print(f"check_runbooks: {len(problems)} problems")
        return 1
    n = len(alert_rules(files))
    print(f"ok   {n} runbook_urls in {', '.join(rel(p) for p in files)} resolve to their alert's runbook "
          f"in {rel(args.readme)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
