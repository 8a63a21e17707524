#!/usr/bin/env bash
# Gateway benchmark: 4 replicas (`--executor none`) and pbft-gw on 127.0.0.1,
# driven over HTTP by the load client (client-gw/examples/webhook_load.rs) with
# GitHub push events, each a new commit, signed with the webhook secret.
#
#   scripts/bench-gateway.sh                          # defaults below
#   CONCURRENCY=128 DURATION=10 RATE=20 scripts/bench-gateway.sh
#   KEEP_LOGS=/tmp/bench-logs RUST_LOG=info scripts/bench-gateway.sh   # keep the logs
#
# Phases:
#   1. intake: CONCURRENCY clients post back to back for DURATION s; each
#      webhook's latency runs to its 202, given once the job is durable
#      (fsync'd). The replicas order and "run" all of it meanwhile, then the
#      load client waits for the last job's verdict (the backlog drained).
#   2. verdict: RATE webhooks/s for DURATION s with ?wait=, each latency from
#      sending the webhook to the answer carrying its verdict (f + 1 matching
#      signed results, the verdict stored).
# Everything shares this machine's cores: replicas, gateway and load client.
# Prints the figures, then as the last line:
#   RESULT intake_rps=… intake_p99_ms=… verdict_p50_ms=… verdict_p99_ms=…
# Stops everything it started, also on failure or ctrl-c.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONCURRENCY=${CONCURRENCY:-64}
DURATION=${DURATION:-10}
RATE=${RATE:-20}

cargo build --release -q -p pbft-node --bin pbft-node -p pbft-gw --bin pbft-gw --example webhook_load
target=${CARGO_TARGET_DIR:-target}
node=$target/release/pbft-node
gw=$target/release/pbft-gw
load=$target/release/examples/webhook_load

work=$(mktemp -d -t pbft-bench-gw.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # Up to 15 s for graceful stops, then for good: a wedged process must not
  # hold the benchmark (or CI) forever.
  for _ in $(seq 1 30); do
    alive=0
    for p in "${pids[@]}"; do if kill -0 "$p" 2>/dev/null; then alive=1; fi; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then echo "process $p did not stop on SIGTERM: killed" >&2; kill -KILL "$p" 2>/dev/null || true; fi
    wait "$p" 2>/dev/null || true
  done
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp -r "$work/log/." "$KEEP_LOGS/"; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Keys, membership (the load client's repository allowed), webhook secret.
{
  echo 'name = "bench-gateway"'
  echo 'repos = ["https://github.com/bench/"]'
  for i in 0 1 2 3; do
    id=$("$node" keygen --out "$work/replica$i.key")
    printf '\n[[replicas]]\npeer_id = "%s"\n' "$id"
  done
  id=$("$node" keygen --out "$work/gateway.key")
  printf '\n[[gateways]]\npeer_id = "%s"\n' "$id"
} > "$work/members.toml"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/webhook.secret"

port=$(free_port)
boot=/ip4/127.0.0.1/tcp/$port
for i in 0 1 2 3; do
  listen=/ip4/127.0.0.1/tcp/0
  extra=()
  if [ "$i" = 0 ]; then listen=$boot; else extra=(--bootstrap "$boot"); fi
  RUST_LOG=${RUST_LOG:-warn} "$node" run --key "$work/replica$i.key" --members "$work/members.toml" \
    --listen "$listen" "${extra[@]}" --data-dir "$work/data$i" --log-dir "$work/log" \
    --executor none 2>"$work/replica$i.stderr" &
  pids+=($!)
done
http=127.0.0.1:$(free_port)
RUST_LOG=${RUST_LOG:-warn} "$gw" --key "$work/gateway.key" --members "$work/members.toml" --listen "$http" \
  --bootstrap "$boot" --webhook-secret-file "$work/webhook.secret" --data-dir "$work/gw" \
  --log-dir "$work/log" 2>"$work/gateway.stderr" &
pids+=($!)

# Until the gateway sees all four replicas.
for _ in $(seq 1 120); do
  if curl -fsS "http://$http/healthz" 2>/dev/null | grep -q '"replicas_connected":4'; then break; fi
  sleep 0.5
done
curl -fsS "http://$http/healthz" | grep -q '"replicas_connected":4' || { echo "the gateway never saw 4 replicas" >&2; exit 1; }

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
run_load() { # flags of the load client; shows its report, prints its LOAD line
  local out
  out=$("$load" --url "http://$http" --secret-file "$work/webhook.secret" "$@")
  echo "$out" | grep '^LOAD '
}

echo "cores: $(nproc), shared by 4 replicas, the gateway and the load client" >&2
echo "intake: $CONCURRENCY clients for $DURATION s" >&2
intake=$(run_load --mode intake --concurrency "$CONCURRENCY" --duration "$DURATION" --run 1)
echo "verdict: $RATE webhooks/s with ?wait= for $DURATION s" >&2
verdict=$(run_load --mode verdict --rate "$RATE" --duration "$DURATION" --run 2)

# The gateway's own view: where the verdict latency falls (both phases).
echo "gateway histogram (acceptance → verdict, both phases):"
curl -fsS "http://$http/metrics" | grep -E '^pbft_gw_webhook_to_verdict_seconds_(bucket\{le="(0.01|0.02|0.05|0.1|0.2|0.5|1.0|2.0|5.0)"\}|count|sum)' | sed 's/^/  /'
curl -fsS "http://$http/metrics" | grep -E '^pbft_gw_(webhooks|verdicts)_total' | sed 's/^/  /'

irps=$(echo "$intake" | field rps)
ip50=$(echo "$intake" | field p50_ms)
ip99=$(echo "$intake" | field p99_ms)
ierr=$(echo "$intake" | field errors)
vp50=$(echo "$verdict" | field p50_ms)
vp99=$(echo "$verdict" | field p99_ms)
verr=$(echo "$verdict" | field errors)
echo "intake: $irps webhooks/s durably accepted ($CONCURRENCY clients), p50 $ip50 ms, p99 $ip99 ms, $ierr errors"
echo "webhook → verdict at $RATE/s: p50 $vp50 ms, p99 $vp99 ms, $verr errors"
echo "RESULT intake_rps=$irps intake_p99_ms=$ip99 verdict_p50_ms=$vp50 verdict_p99_ms=$vp99"
