"""Progress lines while a job runs, not only at the end.

Beam metrics are only readable after the run on the local runners, so each worker
process keeps its own tallies and prints a line every few seconds. On Dataflow the
same lines land in the worker logs; the job's counters are the authoritative totals.
"""
from __future__ import annotations

import sys
import threading
import time

import apache_beam as beam


class _Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.start = time.monotonic()
        self.last_print = 0.0


_TALLY = _Tally()  # per process: telemetry only, never read back by the job


def bump(what: str, job: str = "pseudo_label", interval_s: float = 5.0) -> None:
    """Count one `what` ("read", "labeled", "extracted", "failed") and maybe print the line."""
    now = time.monotonic()
    with _TALLY.lock:
        _TALLY.counts[what] = _TALLY.counts.get(what, 0) + 1
        if now - _TALLY.last_print < interval_s:
            return
        _TALLY.last_print = now
        c = dict(_TALLY.counts)
    finished = sorted(k for k in c if k not in ("read", "failed"))  # labeled / extracted
    done = sum(c[k] for k in finished) + c.get("failed", 0)
    rate = done / max(now - _TALLY.start, 1e-9)
    parts = [f"{k} {c.get(k, 0)}" for k in ("read", *finished, "failed")]
    sys.stderr.write(f"[{job}] {', '.join(parts)}, {rate:.2f} images/s\n")
    sys.stderr.flush()


class CountProgress(beam.DoFn):
    """Pass-through that counts elements as `what` (a Beam counter + the progress line)."""

    def __init__(self, what: str, namespace: str = "pseudo_label"):
        self.what, self.namespace = what, namespace
        self.counter = beam.metrics.Metrics.counter(namespace, what)

    def process(self, element):
        self.counter.inc()
        bump(self.what, self.namespace)
        yield element
