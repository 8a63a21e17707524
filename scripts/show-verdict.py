"""Prints a job of the gateway (`GET /jobs/ID` JSON on stdin) for people:
the verdict, then each replica's vote. Used by `scripts/testnet.sh demo`."""

import json
import sys

label = sys.argv[1] if len(sys.argv) > 1 else ""
raw = sys.stdin.read()
try:
    job = json.loads(raw)
except ValueError:
    sys.exit(f"{label}: the gateway answered something that is not JSON: {raw[:200]!r}")
if "error" in job and "verdict" not in job:
    sys.exit(f"{label}: the gateway refused: {job['error']}")

print(f"== {label}: job {job.get('id')} ({job.get('repo')} {job.get('ref')} at {job.get('commit') or 'unresolved'})")
print(f"verdict: {job.get('verdict') or 'pending'}")
for vote in job.get("votes") or []:
    what = vote.get("vote") or "no answer yet"
    detail = f" ({vote['detail']})" if vote.get("detail") else ""
    digest = f"  result {vote['result'][:16]}" if vote.get("result") else ""
    print(f"  {vote.get('replica')}: {what}{detail}{digest}")
cert = job.get("certificate")
print(f"certificate: {'yes, ' + str(sum(len(s.get('replies', [])) for s in cert.get('sets', []))) + ' signed replies' if cert else 'none'}")
