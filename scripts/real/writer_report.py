"""The report both real-cluster writers print (scripts/real/etcd/writer.py, scripts/real/patroni/writer.py; read by
tests::real::writer): one JSON object, written to --report too.

Fields: attempts, acknowledged, failed, lost (acknowledged writes missing or different on read-back: must be 0),
failed_but_present, duration_ms, longest_gap_ms (the longest time between two acknowledgements, counting from the
start and to the stop), longest_gap_from_unix_ms/_to_, unavailable_ms (the sum of the gaps longer than the
threshold), availability (1 - unavailable_ms / duration_ms), gap_threshold_ms, gaps (each gap above the threshold),
writes_per_s, started_unix_ms, lost_keys (up to 20).
"""
import json
import os


def write(path, *, attempts, acknowledged, failed, lost_keys, failed_but_present, ack_times, end, start_unix,
          gap_threshold_ms):
    """Builds the report from the acknowledgement times (ms since the start, in order) and the run's end (ms), prints
    it, and writes it to `path` (when given) through a temporary file. Returns it."""
    marks = [0.0] + list(ack_times) + [end]
    gaps = []
    longest = (0.0, 0.0, 0.0)
    for a, b in zip(marks, marks[1:]):
        if b - a > longest[0]:
            longest = (b - a, a, b)
        if b - a > gap_threshold_ms:
            gaps.append({"from_unix_ms": round(start_unix * 1000 + a), "to_unix_ms": round(start_unix * 1000 + b),
                         "ms": round(b - a, 1)})
    unavailable = sum(g["ms"] for g in gaps)
    report = {
        "attempts": attempts,
        "acknowledged": acknowledged,
        "failed": failed,
        "lost": len(lost_keys),
        "failed_but_present": failed_but_present,
        "duration_ms": round(end, 1),
        "longest_gap_ms": round(longest[0], 1),
        "longest_gap_from_unix_ms": round(start_unix * 1000 + longest[1]),
        "longest_gap_to_unix_ms": round(start_unix * 1000 + longest[2]),
        "unavailable_ms": round(unavailable, 1),
        "availability": round(1.0 - unavailable / end, 5) if end > 0 else 0.0,
        "gap_threshold_ms": gap_threshold_ms,
        "gaps": gaps,
        "writes_per_s": round(acknowledged / (end / 1000.0), 1) if end > 0 else 0.0,
        "started_unix_ms": round(start_unix * 1000),
        "lost_keys": [str(k) for k in lost_keys[:20]],
    }
    text = json.dumps(report)
    if path:
        with open(path + ".part", "w") as f:
            f.write(text + "\n")
        os.replace(path + ".part", path)
    print(text)
    return report
