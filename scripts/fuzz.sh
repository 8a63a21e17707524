#!/usr/bin/env bash
# Fuzzing: libFuzzer targets under fuzz/ (cargo-fuzz's layout, built by
# `cargo fuzz` on the stable toolchain), each run for a given time.
#
#   scripts/fuzz.sh                      # every target for 60 s
#   scripts/fuzz.sh 600                  # every target for 10 minutes
#   scripts/fuzz.sh 600 wire refs        # only these
#   scripts/fuzz.sh seeds                # rewrite the seed corpus fuzz/seeds/
#
# Targets (fuzz/src/<target>.rs says what each checks):
#   wire      envelope, every message kind, peer exchanges, state, gossip validation, certificates
#   webhook   the gateway's intake: PoC call, GitHub, Gitea/Forgejo, GitLab, signatures
#   pipeline  .pbft-ci.yml parsing (Pipeline::parse)
#   refs      check_ref, check_commit, check_url (replicas) and the gateway's checks
#
# Each run starts from the committed seeds (fuzz/seeds/<target>), the inputs
# of past crashes (fuzz/regressions/<target>) and the corpus grown by earlier
# runs (fuzz/corpus/<target>, not committed). A crash is saved under
# fuzz/artifacts/<target>/ and fuzzing goes on for the rest of the time.
# Prints per target executions, execs/s, corpus size, coverage and crashes,
# and as the last line:
#   RESULT wire=EXECS webhook=EXECS pipeline=EXECS refs=EXECS crashes=N seconds_per_target=S
# Exits 1 if anything crashed.
#
# Environment: NICE (default 19; the machine is shared), FUZZ_ARGS (more
# libFuzzer flags, e.g. "-max_len=65536").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ALL_TARGETS=(wire webhook pipeline refs)
NICE=${NICE:-19}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz from crates.io" >&2
  cargo install cargo-fuzz --locked
fi

build() {
  # -s none: no sanitizer (the code is safe Rust; ASan would need the
  # unstable -Zsanitizer and halve the speed). -a: debug assertions and
  # overflow checks on, so an overflow is a crash. More codegen units: the
  # dependency tree (libp2p, bollard, axum) builds in minutes, not tens.
  nice -n "$NICE" cargo fuzz build -O -a -s none --codegen-units 16 "$@" >&2
}
bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release

if [ "${1:-}" = seeds ]; then
  build wire
  rm -rf fuzz/seeds
  PBFT_FUZZ_WRITE_SEEDS=fuzz/seeds "$bin_dir/wire" -runs=0
  exit 0
fi

seconds=${1:-60}
case $seconds in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET…] | $0 seeds" >&2; exit 2 ;;
esac
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "no fuzz target $t (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

build
mkdir -p fuzz/logs

result="RESULT"
total_crashes=0
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  artifacts=fuzz/artifacts/$t
  log=fuzz/logs/$t.log
  mkdir -p "$corpus" "$artifacts"
  : >"$log"
  dirs=("$corpus" "fuzz/seeds/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  dict=()
  [ -f "fuzz/dicts/$t.dict" ] && dict=("-dict=fuzz/dicts/$t.dict")
  execs=0 crashes=0 runs=0 cov="" corp=""
  start=$(date +%s)
  seen=$(mktemp)
  run_log=$(mktemp)
  ls "$artifacts" >"$seen"
  # libFuzzer stops at a crash: start it again for the time left, unless it
  # crashed on an input it had already crashed on (a crashing seed).
  while :; do
    left=$((seconds - ($(date +%s) - start)))
    [ "$left" -gt 0 ] || break
    runs=$((runs + 1))
    set +e
    # shellcheck disable=SC2086
    nice -n "$NICE" "$bin_dir/$t" "${dirs[@]}" "${dict[@]}" -max_total_time="$left" -print_final_stats=1 \
      -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-} >"$run_log" 2>&1
    rc=$?
    set -e
    cat "$run_log" >>"$log"
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run_log" | tail -1)
    execs=$((execs + ${n:-0}))
    line=$(grep -E '^#[0-9]+' "$run_log" | tail -1 || true)
    if [ -n "$line" ]; then
      cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$line")
      corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$line")
    fi
    [ "$rc" -eq 0 ] && break
    new=$(ls "$artifacts" | grep -vxF -f "$seen" || true)
    if [ -z "$new" ]; then
      echo "$t: libFuzzer exited with $rc and saved nothing new; see $log" >&2
      break
    fi
    crashes=$((crashes + $(wc -l <<<"$new")))
    for a in $new; do echo "$t: CRASH $artifacts/$a" >&2; done
    ls "$artifacts" >"$seen"
    [ "$runs" -lt 50 ] || break
  done
  rm -f "$seen" "$run_log"
  elapsed=$(( $(date +%s) - start ))
  [ "$elapsed" -gt 0 ] || elapsed=1
  files=$(find "$corpus" -type f | wc -l)
  echo "$t: ${elapsed} s, $execs executions, $((execs / elapsed)) execs/s," \
    "corpus ${corp:-?} (units/bytes; $files files in $corpus), coverage ${cov:-?} edges, crashes $crashes, log $log"
  result+=" $t=$execs"
  total_crashes=$((total_crashes + crashes))
done
echo "$result crashes=$total_crashes seconds_per_target=$seconds"
[ "$total_crashes" -eq 0 ]
