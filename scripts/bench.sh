#!/usr/bin/env bash
# gapwatch's benchmarks: builds the release binaries, makes sure moto's server is
# there, and runs target/release/gapwatch-bench against local peers (moto's
# server, the vendor simulator, SQLite, a throwaway Postgres cluster it starts
# itself). Prints a Markdown table of figures,
# each with how it was measured; exits non-zero if a step breaks (a fill that
# never finishes, a record lost or delivered twice).
#
#   ./scripts/bench.sh                 # full sizes (100k and 1M-record fills), ~4 minutes
#   ./scripts/bench.sh --smoke         # small sizes, one repetition (CI), under a minute
#   ./scripts/bench.sh --only fill,rate --keep --out /tmp/figures.md
#   ./scripts/bench.sh --only state    # the same fill with state in SQLite and in Postgres, rows and bytes
#
# Figures come from release builds. --smoke only checks that every step still
# works, so it uses the debug builds CI already has (BENCH_PROFILE=release to
# override).
#
# Figures depend on the machine and on what else runs on it: the header line
# prints the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v "${MOTO_SERVER:-moto_server}" >/dev/null 2>&1; then
  echo "== installing moto's server (pip)" >&2
  python3 -m pip install --quiet 'moto[server]'
  hash -r
fi

# The state step compares SQLite with a Postgres cluster of its own (initdb +
# pg_ctl in a scratch directory, as the tests do): it needs the server binaries.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${PG_BIN:-}" ]; then
  echo "== installing postgresql (apt)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  # Debian's package starts a server of its own; the bench does not use it.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop postgresql >/dev/null 2>&1 || true; fi
fi

profile="${BENCH_PROFILE:-}"
if [ -z "$profile" ]; then
  profile=release
  for a in "$@"; do [ "$a" = --smoke ] && profile=debug; done
fi
case "$profile" in
  release) echo "== cargo build --release --workspace" >&2; cargo build --release --workspace --quiet; dir=release ;;
  debug) echo "== cargo build --workspace" >&2; cargo build --workspace --quiet; dir=debug ;;
  *) echo "BENCH_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac

exec "./target/$dir/gapwatch-bench" "$@"
