#!/usr/bin/env python3
"""Wrap deploy/prometheus/gapwatch-rules.yml into the PrometheusRule of the Kustomize base.

    python3 deploy/prometheus/gen-prometheusrule.py           # rewrite the manifest
    python3 deploy/prometheus/gen-prometheusrule.py --check   # exit 1 if it is stale

The rules are copied as text (from `groups:` on, indented under `spec:`), so the
operator loads exactly what `promtool test rules` tested. tests/ops/check_queries.py
checks the same identity independently.
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/gapwatch-rules.yml"
OUT = ROOT / "deploy/kustomize/base/prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/gapwatch-rules.yml by
# deploy/prometheus/gen-prometheusrule.py: edit the rules file and re-run it.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: gapwatch
  labels:
    app.kubernetes.io/name: gapwatch
spec:
"""


def rules_body(text: str) -> list[str]:
    """The rules file from its `groups:` line on (the leading comments stay behind)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("groups:"):
            return lines[i:]
    raise SystemExit(f"{RULES}: no top-level `groups:`")


def render() -> str:
    body = ["  " + line if line.strip() else "" for line in rules_body(RULES.read_text())]
    return HEADER + "\n".join(body) + "\n"


def main() -> int:
    want = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != want:
            print(f"{OUT.relative_to(ROOT)} is stale: run {pathlib.Path(__file__).relative_to(ROOT)}")
            return 1
        print(f"{OUT.relative_to(ROOT)} matches {RULES.relative_to(ROOT)}")
        return 0
    OUT.write_text(want)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
