#!/usr/bin/env bash
# Consensus benchmark: 4 replicas on 127.0.0.1 with `--executor none`, driven
# by the load generator (node/examples/load.rs) through the gateway client.
#
#   scripts/bench-consensus.sh            # defaults below
#   IN_FLIGHT=1024 DURATION=20 scripts/bench-consensus.sh
#   RATE=30 scripts/bench-consensus.sh   # latency at 30 requests/s only
#   KEEP_LOGS=/tmp/bench-logs RUST_LOG=info scripts/bench-consensus.sh   # keep the replicas' logs
#   DURATION=600 LATENCY_DURATION=10 RSS_EVERY=30 scripts/bench-consensus.sh   # soak: RSS over time
#
# RSS_EVERY=S samples each replica's RSS (VmRSS) every S seconds during the
# saturation run and prints them as a table. The replicas' CPU time during the
# saturation run, per ordered request, is printed too: a figure that holds
# when other work shares the machine, unlike requests/s.
#
# Prints ordered requests/s at saturation (IN_FLIGHT requests kept
# outstanding), latency p50/p99 at a tenth of that rate (submission to f + 1
# "accepted" replies), each replica's peak RSS (VmHWM), and as the last line:
#   RESULT ordered_rps=… p50_ms=… p99_ms=… peak_rss_mb=…
# Stops everything it started, also on failure or ctrl-c.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IN_FLIGHT=${IN_FLIGHT:-512}
DURATION=${DURATION:-10}
LATENCY_DURATION=${LATENCY_DURATION:-$DURATION}
RSS_EVERY=${RSS_EVERY:-0}

cargo build --release -q -p pbft-node --bin pbft-node --example load
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/pbft-node
load=$target/release/examples/load

work=$(mktemp -d -t pbft-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp -r "$work/log/." "$KEEP_LOGS/"; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Keys and membership.
{
  echo 'name = "bench"'
  echo 'repos = ["file:///"]'
  for i in 0 1 2 3; do
    id=$("$bin" keygen --out "$work/replica$i.key")
    printf '\n[[replicas]]\npeer_id = "%s"\n' "$id"
  done
  for g in 0 1; do
    id=$("$bin" keygen --out "$work/gateway$g.key")
    printf '\n[[gateways]]\npeer_id = "%s"\n' "$id"
  done
} > "$work/members.toml"

# A free port for replica 0; the others find the network through it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 17000)
boot=/ip4/127.0.0.1/tcp/$port
for i in 0 1 2 3; do
  listen=/ip4/127.0.0.1/tcp/0
  extra=()
  if [ "$i" = 0 ]; then listen=$boot; else extra=(--bootstrap "$boot"); fi
  RUST_LOG=${RUST_LOG:-warn} "$bin" run --key "$work/replica$i.key" --members "$work/members.toml" \
    --listen "$listen" "${extra[@]}" --data-dir "$work/data$i" --log-dir "$work/log" \
    --executor none 2>"$work/replica$i.stderr" &
  pids+=($!)
done

run_load() { # gateway, then load's own flags; shows its report, prints its LOAD line
  local out
  out=$("$load" --members "$work/members.toml" --key "$work/gateway$1.key" --bootstrap "$boot" "${@:2}")
  echo "$out" >&2
  echo "$out" | grep '^LOAD '
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

cpu_ticks() { # user + system clock ticks of all replicas so far
  local t=0 i
  for i in 0 1 2 3; do
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/${pids[$i]}/stat")))
  done
  echo "$t"
}
rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
sampler=
if [ "$RSS_EVERY" != 0 ]; then
  echo "RSS (MB) every $RSS_EVERY s: seconds replica0 replica1 replica2 replica3" > "$work/rss"
  (
    t=0
    while true; do
      line="$t"
      for i in 0 1 2 3; do line="$line $(rss_mb "${pids[$i]}")"; done
      echo "$line" >> "$work/rss"
      sleep "$RSS_EVERY"
      t=$((t + RSS_EVERY))
    done
  ) &
  sampler=$!
  pids+=("$sampler")
fi

cpu_per_req=skipped
if [ -z "${RATE:-}" ]; then
  echo "saturation: $IN_FLIGHT requests in flight for $DURATION s" >&2
  cpu0=$(cpu_ticks)
  sat=$(run_load 0 --in-flight "$IN_FLIGHT" --duration "$DURATION")
  cpu1=$(cpu_ticks)
  rps=$(echo "$sat" | field rps)
  ordered=$(echo "$sat" | field ordered)
  cpu_per_req=$(awk -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v n="$ordered" \
    'BEGIN { if (n > 0) printf "%.3f", t / hz * 1000 / n; else print "nan" }')
  rate=$(awk -v r="$rps" 'BEGIN { x = r / 10; if (x < 1) x = 1; printf "%.1f", x }')
else
  rps=skipped rate=$RATE
fi
if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; cat "$work/rss"; fi
echo "latency: $rate requests/s (a tenth of saturation) for $LATENCY_DURATION s" >&2
lat=$(run_load 1 --rate "$rate" --duration "$LATENCY_DURATION")
p50=$(echo "$lat" | field p50_ms)
p99=$(echo "$lat" | field p99_ms)

peak=0
for i in 0 1 2 3; do
  kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/${pids[$i]}/status")
  mb=$(awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }')
  echo "replica $i: peak RSS $mb MB"
  peak=$(awk -v a="$peak" -v b="$mb" 'BEGIN { print (b > a) ? b : a }')
done
echo "ordered at saturation: $rps requests/s ($IN_FLIGHT in flight)"
echo "replicas' CPU per ordered request at saturation: $cpu_per_req ms (all four together)"
echo "latency at $rate requests/s: p50 $p50 ms, p99 $p99 ms"
echo "RESULT ordered_rps=$rps p50_ms=$p50 p99_ms=$p99 peak_rss_mb=$peak cpu_ms_per_req=$cpu_per_req"
