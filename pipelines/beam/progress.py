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

from pipelines.cli.progress import eta_text


class _Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.start = time.monotonic()
        self.last_print = 0.0
        self.total: int | None = None  # images this run will go through, where this process selected them


_TALLY = _Tally()  # per process: telemetry only, never read back by the job


def set_total(images: int) -> None:
    """The images this run processes (its selection, done in this process): the line gains done/total and an ETA.
    Worker processes that did not select (multi-process runners) print without them."""
    with _TALLY.lock:
        _TALLY.total = images


def bump(what: str, job: str = "pseudo_label", interval_s: float = 5.0, quiet: bool = False) -> None:
    """Count one `what` ("read", "labeled", "extracted", "failed") and maybe print the line."""
    now = time.monotonic()
    with _TALLY.lock:
        _TALLY.counts[what] = _TALLY.counts.get(what, 0) + 1
        if quiet or now - _TALLY.last_print < interval_s:
            return
        _TALLY.last_print = now
        c, total = dict(_TALLY.counts), _TALLY.total
    finished = sorted(k for k in c if k not in ("read", "failed"))  # labeled / extracted
    done = sum(c[k] for k in finished) + c.get("failed", 0)
    elapsed = max(now - _TALLY.start, 1e-9)
    rate = done / elapsed
    parts = ", ".join(f"{k} {c.get(k, 0)}" for k in ("read", *finished, "failed"))
    if total:
        eta = f", ETA {eta_text((total - done) / rate)}" if 0 < done < total and rate > 0 else ""
        line = f"[{job}] {done}/{total} images ({100 * done / total:.0f}%): {parts}, {rate:.2f} images/s{eta}"
    else:
        line = f"[{job}] {parts}, {rate:.2f} images/s"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class CountProgress(beam.DoFn):
    """Pass-through that counts elements as `what` (a Beam counter + the progress line unless quiet)."""

    def __init__(self, what: str, namespace: str = "pseudo_label", quiet: bool = False):
        self.what, self.namespace, self.quiet = what, namespace, quiet
        self.counter = beam.metrics.Metrics.counter(namespace, what)

    def process(self, element):
        self.counter.inc()
        bump(self.what, self.namespace, quiet=self.quiet)
        yield element
