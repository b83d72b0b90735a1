#!/usr/bin/env bash
# gapwatch's whole job on one machine: moto's server plays SQS, vendor-sim plays the
# vendor (its queue and its REST API), gapwatch relays the feed to the app's queue,
# and a small consumer plays the app. The vendor goes silent; gapwatch notices,
# recovers the missing records from the vendor's API while the outage goes on, and
# the final check compares what the vendor produced with what the app received.
# The vendor also loses a few records on their way to its queue without going
# silent: gapwatch's completeness audit finds exactly those and delivers them.
# Live records reach the vendor queue wrapped as EventBridge events (a partner
# event bus with an SQS target) while the REST API lists bare records: the app
# reads `detail`, and so must it read every recovered message.
#
#   ./scripts/demo.sh            # SILENCE=20 RATE=20 DROP_RATE=0.03 LOSSY=15 to change the outage, rate, losses
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SILENCE=${SILENCE:-20}
RATE=${RATE:-20}
DROP_RATE=${DROP_RATE:-0.03}
LOSSY=${LOSSY:-15}

say() { printf '\033[1m[demo %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*"; }

# --- what the demo needs ---
if ! command -v moto_server >/dev/null 2>&1; then
  say "installing moto's server (pip install 'moto[server]')"
  python3 -m pip install --quiet 'moto[server]'
  hash -r
fi
command -v curl >/dev/null 2>&1 || { say "installing curl"; apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
say "building gapwatch and vendor-sim (cargo build --workspace)"
cargo build --workspace --quiet

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  say "stopped everything; logs were in $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true

# --- moto's server: SQS on loopback ---
MOTO_PORT=$(free_port)
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
export MOTO_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
for _ in $(seq 100); do curl -s -o /dev/null "$MOTO_ENDPOINT" && break; sleep 0.1; done
queues=$(python3 - <<'EOF'
import boto3, os
sqs = boto3.client("sqs", endpoint_url=os.environ["MOTO_ENDPOINT"], region_name="us-east-1")
print(sqs.create_queue(QueueName="vendor-orders")["QueueUrl"], sqs.create_queue(QueueName="app-orders")["QueueUrl"])
EOF
)
read -r VENDOR_QUEUE_URL APP_QUEUE_URL <<<"$queues"
export VENDOR_QUEUE_URL APP_QUEUE_URL
say "moto's SQS at $MOTO_ENDPOINT: vendor queue vendor-orders, app queue app-orders"

# --- the vendor: publishes $RATE records/s to its queue, serves its history over REST ---
export VENDOR_TOKEN="demo-vendor-token"
"$ROOT/target/debug/vendor-sim" --listen 127.0.0.1:0 --rate "$RATE" --queue-url "$VENDOR_QUEUE_URL" \
  --endpoint-url "$MOTO_ENDPOINT" --token "$VENDOR_TOKEN" --pagination cursor --live-envelope eventbridge \
  >"$WORK/vendor.out" 2>"$WORK/vendor.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$WORK/vendor.out" 2>/dev/null && break; sleep 0.1; done
export VENDOR_URL="http://$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listening"])' "$WORK/vendor.out")"
say "vendor-sim publishes $RATE records/s; its REST API is $VENDOR_URL/v1/events"

# --- the app: consumes the app queue, writes every record id it gets ---
python3 - "$APP_QUEUE_URL" "$WORK/app-ids.txt" >"$WORK/app.log" 2>&1 <<'EOF' &
import boto3, json, os, sys
queue, out = sys.argv[1], sys.argv[2]
sqs = boto3.client("sqs", endpoint_url=os.environ["MOTO_ENDPOINT"], region_name="us-east-1")
with open(out, "a") as f:
    while True:
        r = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                MessageAttributeNames=["All"])
        msgs = r.get("Messages", [])
        for m in msgs:
            event = json.loads(m["Body"])
            # The app reads EventBridge events: the record is `detail`. A message
            # it cannot read is an error (its id line is missing from the check).
            if event.get("detail-type") != "order.created" or "detail" not in event:
                print("unreadable message:", m["Body"], flush=True)
                continue
            rec = event["detail"]
            recovered = "gapwatch-backfill" in m.get("MessageAttributes", {})
            f.write(f'{rec["id"]} {"recovered" if recovered else "live"}\n')
        f.flush()
        if msgs:
            sqs.delete_message_batch(QueueUrl=queue, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
EOF
PIDS+=($!)

# --- gapwatch ---
export GAPWATCH_PORT=$(free_port) GAPWATCH_STATE_DIR="$WORK/state" GAPWATCH_ADMIN_TOKEN="demo-admin"
API="http://127.0.0.1:$GAPWATCH_PORT"
"$ROOT/target/debug/gapwatch" --log-format text run --config "$ROOT/config/demo.toml" >"$WORK/gapwatch.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "$API/healthz" >/dev/null && break; sleep 0.1; done
say "gapwatch runs with config/demo.toml (max_silence 5s): metrics $API/metrics, API $API/api/v1/feeds, $API/api/v1/gaps"
say "log: $WORK/gapwatch.log"

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
feed() { curl -s "$API/api/v1/feeds" | json "$1"; }
gap() { curl -s "$API/api/v1/gaps?feed=orders&limit=1" | json "$1"; }

for _ in 1 2 3 4 5; do
  sleep 1
  say "feed flowing: $(feed '"freshness %.1fs, %d records relayed" % (d["feeds"][0]["freshness_seconds"] or 0, d["feeds"][0]["records_observed"])')"
done

say ">>> the vendor goes silent for ${SILENCE}s (it still has the records; its queue gets none)"
curl -s -X POST -H 'content-type: application/json' -d "{\"for_seconds\": $SILENCE}" "$VENDOR_URL/control/silence" >/dev/null
silence_end=$(( $(date +%s) + SILENCE ))
state=""
while [ "$(date +%s)" -lt $(( silence_end + 120 )) ]; do
  sleep 1
  g=$(gap '"%s %s %s %s/%s %d" % (d["gaps"][0]["id"], d["gaps"][0]["state"], d["gaps"][0]["fill"], d["gaps"][0]["progress"]["chunks_done"], d["gaps"][0]["progress"]["chunks_total"], d["gaps"][0]["progress"]["records_delivered"]) if d["gaps"] else "none"')
  fresh=$(feed '"%.1f" % (d["feeds"][0]["freshness_seconds"] or 0)')
  read -r id gstate fill chunks delivered <<<"$g" || true
  if [ "$g" = "none" ]; then
    say "freshness ${fresh}s and rising; no gap yet (max_silence 5s)"
  elif [ "$gstate" = "open" ]; then
    [ "$state" = "" ] && say ">>> gap $id OPENED: the feed is silent inside its active window"
    state=open
    say "gap $id open, fill $fill: $delivered records recovered from the vendor's API so far (chunks $chunks) while the outage goes on"
  elif [ "$gstate" = "closed" ]; then
    [ "$state" = "open" ] && say ">>> the feed RESUMED: gap $id closed; the fill finishes the interval (settle + overlap)"
    state=closed
    say "gap $id closed, fill $fill: $delivered records recovered (chunks $chunks)"
    [ "$fill" = "done" ] && { say ">>> fill of gap $id FINISHED"; break; }
  fi
done

# A vendor that loses records without going silent: no gap opens, the audit
# (every 5s, on windows older than 5s) finds them in the vendor's API.
say ">>> the vendor now loses a share of $DROP_RATE of its records on the way to its queue, for ${LOSSY}s (no silence: no gap opens)"
curl -s -X POST -H 'content-type: application/json' -d "{\"rate\": $RATE, \"drop_rate\": $DROP_RATE}" "$VENDOR_URL/control/rate" >/dev/null
for _ in $(seq "$LOSSY"); do
  sleep 1
done
say "lost so far: $(curl -s "$VENDOR_URL/control/stats" | json 'd["dropped"]'); found missing by the audit so far: $(curl -s "$API/metrics" | awk 'index($0, "gapwatch_audit_records_missing_total{") == 1 { print $2 }')"
# The audit proves completeness up to its watermark. Once the vendor stops losing
# records, wait until the watermark passes that instant: every lost record is then
# delivered. (Stopping the vendor opens a gap, which holds the audit behind it.)
curl -s -X POST -H 'content-type: application/json' -d "{\"rate\": $RATE, \"drop_rate\": 0}" "$VENDOR_URL/control/rate" >/dev/null
no_drops=$(date +%s)
say ">>> the vendor stops losing records; waiting for the audit's watermark to pass $(date -u -d "@$no_drops" +%H:%M:%S)"
for _ in $(seq 120); do
  sleep 1
  vu=$(feed 'd["feeds"][0]["verified_until"] or ""')
  [ -n "$vu" ] && [ "$(date -u -d "$vu" +%s)" -gt "$no_drops" ] && break
done
say "verified until $vu"

# The shape check: live messages gapwatch sampled, looked up again through the
# vendor's API and wrapped as a recovery would: the app could not tell them apart.
say ">>> shape check: sampled live messages vs the same records as gapwatch would recover them"
shape_rc=0
"$ROOT/target/debug/gapwatch" check-shape --feed orders --config "$ROOT/config/demo.toml" || shape_rc=$?

say "stopping the vendor and letting the app drain its queue"
curl -s -X POST -H 'content-type: application/json' -d '{"rate": 0}' "$VENDOR_URL/control/rate" >/dev/null
prev=-1
for _ in $(seq 60); do
  sleep 2
  n=$(wc -l <"$WORK/app-ids.txt")
  [ "$n" = "$prev" ] && break
  prev=$n
done
curl -s "$VENDOR_URL/control/records" | json '"\n".join(d["ids"])' | sort >"$WORK/vendor-ids.txt"
cut -d' ' -f1 "$WORK/app-ids.txt" | sort >"$WORK/app-sorted.txt"
produced=$(wc -l <"$WORK/vendor-ids.txt")
received=$(wc -l <"$WORK/app-sorted.txt")
unique=$(uniq "$WORK/app-sorted.txt" | wc -l)
duplicates=$(( received - unique ))
missing=$(comm -23 "$WORK/vendor-ids.txt" <(uniq "$WORK/app-sorted.txt") | wc -l)
recovered=$(grep -c ' recovered$' "$WORK/app-ids.txt" || true)
silenced=$(curl -s "$VENDOR_URL/control/stats" | json 'd["silenced"]')
dropped=$(curl -s "$VENDOR_URL/control/stats" | json 'd["dropped"]')
curl -s "$VENDOR_URL/control/records?dropped=true" | json '"\n".join(d["ids"])' | sort >"$WORK/dropped-ids.txt"
metric() { curl -s "$API/metrics" | awk -v s="$1" 'index($0, s) == 1 { print $2 }'; }
audit_missing=$(metric 'gapwatch_audit_records_missing_total{feed="orders"}')
audit_runs=$(metric 'gapwatch_audit_runs_total{feed="orders",outcome="ok"}')
dropped_delivered=$(grep ' recovered$' "$WORK/app-ids.txt" | cut -d' ' -f1 | sort | comm -12 - "$WORK/dropped-ids.txt" | wc -l)
verified=$(feed 'd["feeds"][0]["verified_until"]')
say "vendor produced $produced records ($silenced during the silence, never sent to its queue; $dropped more lost on the way to it)"
say "app received $received: $((received - recovered)) live through the relay + $recovered recovered by gapwatch"
say "audit: ${audit_runs:-0} windows verified, ${audit_missing:-0} records found missing and delivered; the vendor lost $dropped, of which $dropped_delivered reached the app as recovered; feed verified until $verified"
say "duplicates: $duplicates, missing: $missing"
"$ROOT/target/debug/gapwatch" gaps --config "$ROOT/config/demo.toml"
if [ "$duplicates" -eq 0 ] && [ "$missing" -eq 0 ] && [ "$produced" -gt 0 ] \
   && [ "${audit_missing:-0}" = "$dropped" ] && [ "$dropped_delivered" -eq "$dropped" ] \
   && [ "$shape_rc" -eq 0 ]; then
  say "CHECK PASSED: every vendor record reached the app exactly once; the audit found and delivered exactly the $dropped lost ones; recovered messages have the live shape"
else
  say "CHECK FAILED"
  exit 1
fi
