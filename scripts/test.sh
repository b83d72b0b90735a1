#!/usr/bin/env bash
# Runs gapwatch's whole test suite on a fresh machine: installs the peers the
# integration tests start (moto's server for SQS/CloudWatch, Prometheus' promtool
# and server, Alertmanager, PostgreSQL), then unit + integration tests, lint, and
# the ops checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 ||
  need_apt+=(prometheus-alertmanager)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubectl)
# The store suite and the replica tests start their own throwaway clusters.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (apt)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! command -v moto_server >/dev/null 2>&1; then
  echo "== installing moto's server (pip)"
  python3 -m pip install --quiet 'moto[server]'
  hash -r
fi
# Prometheus', Alertmanager's and Postgres' Debian packages start servers we don't
# want in tests (the tests start their own on free loopback ports).
if command -v systemctl >/dev/null 2>&1; then
  systemctl stop prometheus prometheus-alertmanager postgresql >/dev/null 2>&1 || true
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test (unit + integration against moto, the vendor simulator, SQLite, Postgres, promtool, Prometheus, Alertmanager)"
cargo build --workspace --quiet
cargo test --workspace -- --test-threads 2

echo "== benchmark smoke run (small sizes: every step must still work; figures are not asserted)"
./scripts/bench.sh --smoke

if [ "${SKIP_OPS:-0}" != 1 ]; then
  echo "== ops checks (alert rules, dashboard queries, manifests)"
  bash scripts/check-ops.sh
fi
