#!/usr/bin/env bash
# Crash storm: 4 replicas (`--executor local`, a tiny pipeline) and a gateway on 127.0.0.1, with
# ports and a temporary directory of their own (not the testnet's). A steady stream of signed
# GitHub push webhooks (a delivery that fails is retried with the same delivery id) while, ROUNDS
# times at a random moment, a random replica (one round in five: the gateway) is killed with -9
# and restarted. Then every process is brought back, the stream stops, and it checks:
#
#   - every accepted webhook has exactly one job at the gateway (GET /jobs), with a verdict, the
#     right one (`master` passes, `feature` fails), and no two jobs share a replica job id;
#   - the replicas' job logs agree wherever two recorded the same job, no replica ran a request
#     twice, and together they hold exactly the gateway's jobs (read once they stopped, with
#     node/examples/job_log.rs);
#   - no replica logged `evidence:` (all of them are correct) and none exited on its own;
#   - no job process (nor a container of these replicas) is left behind.
#
#   scripts/crash-storm.sh [ROUNDS] [SECONDS]   # defaults: 100 rounds, at most 900 s of storm
#
# Prints figures, then as the last line `RESULT rounds=… webhooks=… verdicts=… violations=…`;
# exits 0 iff violations=0. Environment: RATE (webhooks per second, default 2), STORM_PORT (first
# of 5 consecutive ports, default 17300), CARGO_PROFILE (default dev), KEEP=1 keeps the temporary
# directory (it is also kept when something was violated).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

rounds_max=${1:-100}
storm_secs=${2:-900}
rate=${RATE:-2}
port0=${STORM_PORT:-17300}
gw_port=$((port0 + 4))
gw=http://127.0.0.1:$gw_port
profile=${CARGO_PROFILE:-dev}
target=${CARGO_TARGET_DIR:-$root/target}
case $profile in dev | test) bindir=$target/debug ;; *) bindir=$target/$profile ;; esac
node=$bindir/pbft-node
gateway=$bindir/pbft-gw
job_log=$bindir/examples/job_log
[[ $rounds_max =~ ^[0-9]+$ && $storm_secs =~ ^[0-9]+$ ]] || { echo "usage: $0 [ROUNDS] [SECONDS]" >&2; exit 2; }

say() { printf 'crash-storm: %s\n' "$*" >&2; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for p in $(seq "$port0" "$gw_port"); do port_free "$p" || { say "port $p is taken (set STORM_PORT)"; exit 1; }; done
say "building pbft-node, pbft-gw and the job_log example ($profile)"
cargo build -q --profile "$profile" -p pbft-node -p pbft-gw --bins
cargo build -q --profile "$profile" -p pbft-node --example job_log

dir=$(mktemp -d /tmp/pbft-ci-crash-storm.XXXXXX)
# As root, the local executor runs steps as `nobody`: it must pass through to the workspaces.
chmod 711 "$dir"
mkdir -p "$dir/log" "$dir/keys"
violations=0
violation() { say "VIOLATION: $*"; violations=$((violations + 1)); }

declare -A pid=()
poster=
cleanup() {
  local p
  [ -n "$poster" ] && kill -KILL "$poster" 2>/dev/null || true
  for p in "${pid[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ] || [ "$violations" -gt 0 ]; then say "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

# --- the network: keys, membership, repository ---
ids=()
for i in 0 1 2 3; do ids+=("$("$node" keygen --out "$dir/keys/replica$i.key")"); done
gid=$("$node" keygen --out "$dir/keys/gateway.key")
{
  echo 'name = "pbft-ci-crash-storm"'
  echo "repos = [\"file://$dir/repo/\"]"
  for i in 0 1 2 3; do
    printf '\n[[replicas]]\npeer_id = "%s"\naddr = "/ip4/127.0.0.1/tcp/%s"\n' "${ids[$i]}" $((port0 + i))
  done
  printf '\n[[gateways]]\npeer_id = "%s"\n' "$gid"
} >"$dir/members.toml"
od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$dir/webhook.secret"
repo=$dir/repo/origin
mkdir -p "$repo"
g=(git -C "$repo" -c user.name=storm -c user.email=storm@localhost -c commit.gpgsign=false)
git -C "$repo" init -q -b master
# Long enough that some kills land while a step runs.
printf 'steps:\n  - name: test\n    commands: ["sleep 0.3", "true"]\n' >"$repo/.pbft-ci.yml"
"${g[@]}" add -A
"${g[@]}" commit -q -m "master passes"
master=$("${g[@]}" rev-parse HEAD)
"${g[@]}" checkout -q -b feature
printf 'steps:\n  - name: test\n    commands: ["sleep 0.3", "exit 1"]\n' >"$repo/.pbft-ci.yml"
"${g[@]}" commit -q -am "feature fails"
feature=$("${g[@]}" rev-parse HEAD)
"${g[@]}" checkout -q master

start_replica() {
  local i=$1 extra=()
  [ "$i" = 0 ] || extra=(--bootstrap "/ip4/127.0.0.1/tcp/$port0")
  RUST_LOG=info "$node" run --key "$dir/keys/replica$i.key" --members "$dir/members.toml" \
    --listen "/ip4/127.0.0.1/tcp/$((port0 + i))" "${extra[@]}" --no-mdns --data-dir "$dir/replica$i" \
    --executor local --allow-file-urls --log-dir "$dir/log" >/dev/null 2>>"$dir/log/replica$i.stderr" &
  pid[r$i]=$!
}

start_gateway() {
  RUST_LOG=info "$gateway" --key "$dir/keys/gateway.key" --members "$dir/members.toml" \
    --listen "127.0.0.1:$gw_port" --repo "file://$repo" --webhook-secret-file "$dir/webhook.secret" \
    --bootstrap "/ip4/127.0.0.1/tcp/$port0" --no-mdns --allow-file-urls --data-dir "$dir/gateway" \
    --log-dir "$dir/log" >/dev/null 2>>"$dir/log/gateway.stderr" &
  pid[gw]=$!
}

kill9() { # name
  kill -KILL "${pid[$1]}" 2>/dev/null || true
  wait "${pid[$1]}" 2>/dev/null || true
  unset "pid[$1]"
}

# Processes that exited though nobody killed them: a violation; started again.
check_alive() {
  local name
  for name in r0 r1 r2 r3 gw; do
    if [ -z "${pid[$name]:-}" ] || ! kill -0 "${pid[$name]}" 2>/dev/null; then
      if [ -n "${pid[$name]:-}" ]; then violation "$name exited on its own (see $dir/log)"; fi
      if [ "$name" = gw ]; then start_gateway; else start_replica "${name#r}"; fi
    fi
  done
}

wait_healthy() {
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt "$deadline" ]; do
    curl -s --max-time 2 "$gw/healthz" | grep -q '"replicas_connected": *4' && return 0
    sleep 0.5
  done
  return 1
}

for i in 0 1 2 3; do start_replica "$i"; done
start_gateway
wait_healthy 90 || { violation "the gateway did not see 4 replicas within 90 s"; exit 1; }
say "up in $dir: replicas on 127.0.0.1:$port0-$((port0 + 3)), gateway on $gw"

# --- the webhook stream: signed GitHub pushes, a failed delivery retried as it is ---
cat >"$dir/poster.py" <<'EOF'
import hashlib, hmac, json, os, sys, time, urllib.error, urllib.request
gw, secret_file, repo, master, feature, out, stop, rate = sys.argv[1:]
secret = open(secret_file, "rb").read().strip()
n = 0
with open(out, "a", buffering=1) as log:
    while not os.path.exists(stop):
        n += 1
        branch, commit = ("master", master) if n % 2 else ("feature", feature)
        delivery = f"storm-{n}"
        body = json.dumps({
            "ref": f"refs/heads/{branch}", "after": commit, "deleted": False,
            "repository": {"clone_url": repo, "full_name": "storm/origin"},
            "head_commit": {"id": commit, "message": f"{branch} #{n}"},
        }).encode()
        headers = {
            "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
        }
        attempts, deadline, outcome = 0, time.time() + 120, "gave-up"
        while time.time() < deadline:
            attempts += 1
            try:
                req = urllib.request.Request(gw + "/webhook", data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=10) as r:
                    if r.status == 202:
                        outcome = json.load(r)["id"]
                        break
                    outcome = f"status-{r.status}"
            except urllib.error.HTTPError as e:
                outcome = f"status-{e.code}"
                if 400 <= e.code < 500 and e.code != 429:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        log.write(f"{delivery} {branch} {outcome} {attempts}\n")
        time.sleep(1 / float(rate))
EOF
python3 "$dir/poster.py" "$gw" "$dir/webhook.secret" "file://$repo" "$master" "$feature" \
  "$dir/accepted.txt" "$dir/stop" "$rate" &
poster=$!

# --- the storm ---
started=$SECONDS
rounds=0
kills_replica=0
kills_gateway=0
while [ "$rounds" -lt "$rounds_max" ] && [ $((SECONDS - started)) -lt "$storm_secs" ]; do
  sleep "$((RANDOM % 3 + 1)).$((RANDOM % 10))"
  check_alive
  if [ $((RANDOM % 5)) = 0 ]; then
    victim=gw
    kills_gateway=$((kills_gateway + 1))
  else
    victim=r$((RANDOM % 4))
    kills_replica=$((kills_replica + 1))
  fi
  kill9 "$victim"
  # Down for up to 3 s: a primary down that long costs a view change.
  sleep "$((RANDOM % 3)).$((RANDOM % 10))"
  if [ "$victim" = gw ]; then start_gateway; else start_replica "${victim#r}"; fi
  rounds=$((rounds + 1))
  if [ $((rounds % 10)) = 0 ]; then say "round $rounds: $(wc -l <"$dir/accepted.txt") webhooks so far"; fi
done
storm_took=$((SECONDS - started))
sleep 1
check_alive
wait_healthy 120 || violation "the gateway did not see 4 replicas within 120 s after the storm"
touch "$dir/stop"
wait "$poster" || true
poster=

# --- every accepted webhook: one job, one verdict, the right one ---
cat >"$dir/check.py" <<'EOF'
import json, sys, time, urllib.request
gw, accepted_file, out = sys.argv[1:]
def get(path, timeout=30):
    with urllib.request.urlopen(gw + path, timeout=timeout) as r:
        return json.load(r)
posted = [line.split() for line in open(accepted_file)]
accepted = {d: (branch, id_) for d, branch, id_, _ in posted if not id_.startswith(("gave-up", "status-"))}
violations, figures = [], {}
figures["posted"] = len(posted)
figures["accepted"] = len(accepted)
figures["retried"] = sum(1 for p in posted if int(p[3]) > 1)
for d, branch, outcome, _ in posted:
    if d not in accepted:
        violations.append(f"delivery {d} not accepted: {outcome}")
drain_started = time.time()
deadline = drain_started + 300
for d, (branch, id_) in sorted(accepted.items()):
    while True:
        job = get(f"/jobs/{id_}?wait=10", timeout=20)
        if job.get("verdict") is not None or time.time() > deadline:
            break
figures["drain_s"] = round(time.time() - drain_started, 1)
jobs, path = [], "/jobs?limit=500"
while path:
    page = get(path)
    jobs += page["jobs"]
    path = page.get("next")
by_delivery, replica_jobs, verdicts = {}, {}, {}
for j in jobs:
    by_delivery.setdefault(j.get("delivery"), []).append(j)
    if j.get("job"):
        replica_jobs.setdefault(j["job"], []).append(j["id"])
    v = j.get("verdict")
    verdicts[v] = verdicts.get(v, 0) + 1
    if v is None:
        violations.append(f"job {j['id']} ({j.get('delivery')}) has no verdict")
want = {"master": "passed", "feature": "failed"}
for d, (branch, id_) in accepted.items():
    found = by_delivery.get(d, [])
    if len(found) != 1:
        violations.append(f"delivery {d}: {len(found)} jobs")
    elif found[0]["id"] != id_:
        violations.append(f"delivery {d}: answered job {id_}, holds job {found[0]['id']}")
    elif found[0]["verdict"] is not None and found[0]["verdict"] != want[branch]:
        violations.append(f"delivery {d} ({branch}): verdict {found[0]['verdict']}")
for d in by_delivery:
    if d not in accepted:
        violations.append(f"job(s) {[j['id'] for j in by_delivery[d]]} for delivery {d} nobody got a 202 for")
for job, ids in replica_jobs.items():
    if len(ids) > 1:
        violations.append(f"replica job {job} answers gateway jobs {ids}")
figures["jobs"] = len(jobs)
figures["verdicts"] = sum(n for v, n in verdicts.items() if v is not None)
figures["by_verdict"] = " ".join(f"{v}={n}" for v, n in sorted(verdicts.items(), key=str))
json.dump({"figures": figures, "violations": violations, "jobs": sorted(replica_jobs)}, open(out, "w"))
EOF
python3 "$dir/check.py" "$gw" "$dir/accepted.txt" "$dir/gateway-check.json"

# --- stop everything, then the replicas' job logs, logs and leftovers ---
for name in gw r0 r1 r2 r3; do kill -TERM "${pid[$name]:-}" 2>/dev/null || true; done
for name in gw r0 r1 r2 r3; do
  [ -n "${pid[$name]:-}" ] || continue
  for _ in $(seq 150); do kill -0 "${pid[$name]}" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "${pid[$name]}" 2>/dev/null; then violation "$name did not stop within 15 s of SIGTERM"; fi
  kill9 "$name"
done
for i in 0 1 2 3; do "$job_log" "$dir/replica$i" >"$dir/job-log$i.txt"; done

python3 - "$dir" <<'EOF'
import json, sys
d = sys.argv[1]
check = json.load(open(f"{d}/gateway-check.json"))
violations = check["violations"]
logs, lasts = [], []
for i in range(4):
    jobs = {}
    for line in open(f"{d}/job-log{i}.txt"):
        a, b = line.split()
        if a == "last":
            lasts.append(int(b))
        else:
            jobs[a] = b
    logs.append(jobs)
    seen = {}
    for job, req in jobs.items():
        if req in seen:
            violations.append(f"replica {i} ran request {req[:16]} as {seen[req]} and {job}")
        seen[req] = job
union = {}
for i, jobs in enumerate(logs):
    for job, req in jobs.items():
        if union.setdefault(job, req) != req:
            violations.append(f"job {job}: replicas disagree on its request")
if sorted(union) != check["jobs"]:
    gw, reps = set(check["jobs"]), set(union)
    violations.append(f"job logs vs gateway: only in job logs {sorted(reps - gw)[:5]}, only at the gateway {sorted(gw - reps)[:5]}")
f = check["figures"]
print(f"webhooks: {f['posted']} posted, {f['accepted']} accepted, {f['retried']} needed a retry")
print(f"jobs at the gateway: {f['jobs']}; verdicts: {f['verdicts']} ({f['by_verdict']}); drained in {f['drain_s']} s")
print(f"job logs: {' '.join(str(len(j)) for j in logs)} jobs, last slots {' '.join(map(str, lasts))}")
for v in violations[:20]:
    print(f"VIOLATION: {v}")
json.dump({"violations": len(violations), "verdicts": f["verdicts"], "accepted": f["accepted"]}, open(f"{d}/summary.json", "w"))
EOF
read -r v_checks verdicts accepted < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["violations"], s["verdicts"], s["accepted"])' "$dir/summary.json")
violations=$((violations + v_checks))

evidence=$(grep -h 'evidence:' "$dir"/log/pbft-node-*.log || true)
[ -z "$evidence" ] || violation "evidence logged against a correct replica: $(echo "$evidence" | head -1 | cut -c1-200)"
left=()
for p in /proc/[0-9]*; do
  cwd=$(readlink "$p/cwd" 2>/dev/null || true)
  cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline" || true)
  case "$cwd $cmd" in *"$dir"*) [ "${p#/proc/}" = $$ ] || left+=("${p#/proc/}: ${cmd:0:80}") ;; esac
done
[ ${#left[@]} = 0 ] || violation "processes left behind: ${left[*]}"
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  for id in "${ids[@]}"; do
    c=$(docker ps -aq --filter "label=pbft-ci.owner=$id")
    [ -z "$c" ] || violation "containers left behind by $id: $c"
  done
fi
views=$(cat "$dir"/log/pbft-node-*.log | grep -o 'now in view [0-9]*' | awk '{print $4}' | sort -n | tail -1 || true)
transfers=$(cat "$dir"/log/pbft-node-*.log | grep -c 'state transfer: adopted' || true)
echo "storm: $rounds rounds in ${storm_took} s: $kills_replica replica kills, $kills_gateway gateway kills (kill -9, then restart)"
errors=$(cat "$dir"/log/*.log | grep -c ' ERROR ' || true)
echo "view changes: up to view ${views:-0}; state transfers: ${transfers:-0}; ERROR lines logged: ${errors:-0}"
echo "RESULT rounds=$rounds webhooks=$accepted verdicts=$verdicts violations=$violations"
[ "$violations" = 0 ]
