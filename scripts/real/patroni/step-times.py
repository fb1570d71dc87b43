"""Where a Baton upgrade's time goes, from its log (`baton replay ID --json`):

    python3 step-times.py REPLAY.json [--steps]

Each step attempt runs from its scheduling to its recorded result. The log does not stamp a
`StepScheduled`, but its `deadline_ms` is the decision's time + `timeout_ms` + the cluster file's
`result_grace_ms`, so the scheduling time is `deadline_ms - timeout_ms - result_grace_ms`; the result's
`at_ms` is when the service recorded it. A step's time is therefore the whole round trip: the request
through NATS, the executor's spawn of the command, the command, and the signed result back.

Printed: per step kind (the abstract action plus the command's program, e.g. `probe_cluster_status
patronictl`), how many attempts, their total and mean ms; the time no step was running (between one
result and the next scheduling: the poll interval waited after a look that showed the cluster not ready
yet, and the service's own turn-around), with how many `TimerFired` events the log has; and the wall
time from `UpgradeSubmitted` to `UpgradeCompleted`. Every attempt is counted, in the order of the log;
steps that overlap (none do in the upgrade loop: one step at a time) would be counted twice.
--steps lists every attempt too, with the gap before it.
"""

import json
import os
import sys
from collections import defaultdict


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    events = [e["event"] for e in doc["events"]]
    submitted = next(e for e in events if e["type"] == "UpgradeSubmitted")
    grace = submitted["cluster"]["upgrade"]["result_grace_ms"]
    poll = submitted["cluster"]["upgrade"]["poll_interval_ms"]
    start = submitted["at_ms"]
    end = next((e["at_ms"] for e in events if e["type"] == "UpgradeCompleted"), None)

    scheduled = {}  # (step, attempt) -> (at_ms, node, kind)
    attempts = []  # (scheduled_ms, done_ms, node, kind)
    timers = 0
    phases = []
    for e in events:
        t = e["type"]
        if t == "StepScheduled":
            prog = os.path.basename(e["argv"][0]) if e["argv"] else "?"
            if prog == "member.sh" and len(e["argv"]) > 2:
                prog = f"member.sh {e['argv'][2]}"
            kind = f"{e['action']} {prog}"
            scheduled[(e["step"], e["attempt"])] = (e["deadline_ms"] - e["timeout_ms"] - grace, e["node"], kind)
        elif t == "StepResultRecorded":
            s = scheduled.get((e["step"], e["attempt"]))
            if s:
                attempts.append((s[0], e["at_ms"], s[1], s[2]))
        elif t == "TimerFired":
            timers += 1
        elif t == "PhaseEntered":
            phases.append((e["at_ms"], e["phase"]))

    by_kind = defaultdict(list)
    for s, d, _, kind in attempts:
        by_kind[kind].append(d - s)
    idle = 0
    previous = start
    lines = []
    for s, d, node, kind in sorted(attempts):
        gap = max(0, s - previous)
        idle += gap
        lines.append(f"  +{gap:>6} ms  {kind:<44} {node:<6} {d - s:>6} ms")
        previous = max(previous, d)
    if end is not None:
        idle += max(0, end - previous)

    wall = (end - start) if end is not None else None
    busy = sum(d - s for s, d, _, _ in attempts)
    print(f"wall {wall} ms (submitted -> completed); poll_interval_ms {poll}, result_grace_ms {grace}")
    print(f"{len(attempts)} step attempts, {busy} ms in steps; {idle} ms with no step running; {timers} TimerFired")
    print(f"{'kind':<46} {'n':>4} {'total ms':>9} {'mean ms':>8} {'max ms':>7}")
    for kind, ds in sorted(by_kind.items(), key=lambda kv: -sum(kv[1])):
        print(f"{kind:<46} {len(ds):>4} {sum(ds):>9} {sum(ds) / len(ds):>8.0f} {max(ds):>7}")
    print("phases:", ", ".join(f"{p} +{t - start} ms" for t, p in phases))
    if "--steps" in sys.argv:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
