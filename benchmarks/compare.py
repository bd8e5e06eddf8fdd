"""Two runs' per-image scores side by side: paired bootstrap difference, ratio and correlation.

    python -m benchmarks.compare A.json B.json [--key PATH] [--key-b PATH] [--json OUT]
        [--resamples 1000] [--seed 0]

A and B are the --json files of benchmarks that score images (caption_learning and
task_learning write `per_image_cider_d`; distillation writes `per_image.<arm>`). --key is a
dotted path to an {image id: score} mapping in both files (default `per_image_cider_d`);
--key-b reads B at another path, so two arms of one run compare too (A.json and B.json may
be the same file). Only images scored on both sides count; the interval resamples images
with replacement, both sides together (a paired percentile bootstrap):

- B - A: the mean of the per-image differences [95% interval];
- B / A: the ratio of the means [95% interval], as the int8 bar of docs/deploy.md reads;
- the Pearson correlation of the per-image scores (how much pairing narrows the interval).

Exit 2 with one line for a missing file, a path that is not there, or no image in common.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from benchmarks.caption_learning import BOOTSTRAP_RESAMPLES, paired_difference, paired_ratio

PROG = "python -m benchmarks.compare"
DEFAULT_KEY = "per_image_cider_d"


class CompareError(ValueError):
    """What makes two files not comparable, in one line."""


def per_image_scores(path: str, key: str) -> dict[str, float]:
    """The {image id: score} mapping at dotted `key` in the JSON file at `path`."""
    try:
        with open(path) as f:
            value = json.load(f)
    except OSError as e:
        raise CompareError(f"{path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise CompareError(f"{path} is not JSON ({e})") from e
    walked = []
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            have = ", ".join(sorted(value)[:12]) if isinstance(value, dict) else type(value).__name__
            raise CompareError(f"{path} has no {'.'.join([*walked, part])} (there: {have})")
        value = value[part]
        walked.append(part)
    if not isinstance(value, dict) or not value:
        raise CompareError(f"{path}: {key} is not a non-empty mapping of image id to score")
    bad = [k for k, v in value.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)]
    if bad:
        raise CompareError(f"{path}: {key}[{bad[0]!r}] is not a finite number")
    return {str(k): float(v) for k, v in value.items()}


def compare(a: dict[str, float], b: dict[str, float], *, resamples: int = BOOTSTRAP_RESAMPLES,
            seed: int = 0) -> dict:
    """B against A over the images both scored."""
    import numpy as np

    ids = sorted(set(a) & set(b))
    if not ids:
        raise CompareError("no image is scored in both runs")
    x = np.array([a[i] for i in ids], dtype=np.float64)
    y = np.array([b[i] for i in ids], dtype=np.float64)
    low, point, high = paired_difference({i: b[i] for i in ids}, {i: a[i] for i in ids},
                                         resamples=resamples, seed=seed)
    interval = paired_ratio(a, b, resamples=resamples, seed=seed)
    corr = float(np.corrcoef(x, y)[0, 1]) if len(ids) > 1 and x.std() > 0 and y.std() > 0 else None
    return {"images": len(ids), "only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a)),
            "mean_a": float(x.mean()), "mean_b": float(y.mean()),
            "difference": {"point": point, "low": low, "high": high},
            "ratio": ({"point": float(y.mean() / x.mean()), "low": interval[0], "high": interval[1]}
                      if x.mean() != 0 and interval else None),
            "correlation": corr, "resamples": resamples, "seed": seed, "level": 0.95}


def table(out: dict, name_a: str, name_b: str) -> str:
    d, r = out["difference"], out["ratio"]
    rows = [f"| images scored on both sides | {out['images']} (only A: {out['only_a']}, only B: {out['only_b']}) |",
            f"| A: {name_a} (mean) | {out['mean_a']:.3f} |", f"| B: {name_b} (mean) | {out['mean_b']:.3f} |",
            f"| B - A [95% paired bootstrap] | {d['point']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |",
            "| B / A [95% paired bootstrap] | "
            + (f"{r['point']:.3f} [{r['low']:.3f}, {r['high']:.3f}] |" if r else "- (A's mean is 0) |"),
            "| correlation of per-image scores | "
            + ("-" if out["correlation"] is None else f"{out['correlation']:.2f}") + " |"]
    return "\n".join(["| compare | value |", "|---|---:|", *rows,
                      f"\n{out['resamples']} resamples, seed {out['seed']}"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("a", metavar="A.json", help="the reference run")
    ap.add_argument("b", metavar="B.json", help="the run compared with it")
    ap.add_argument("--key", default=DEFAULT_KEY, help=f"dotted path to the per-image scores (default {DEFAULT_KEY})")
    ap.add_argument("--key-b", default=None, help="B's path when it differs from --key")
    ap.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES)
    ap.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    ap.add_argument("--json", default=None, help="write the comparison here")
    args = ap.parse_args(argv)
    if args.resamples < 1:
        ap.error(f"--resamples must be >= 1, not {args.resamples}")
    key_b = args.key_b or args.key
    try:
        out = compare(per_image_scores(args.a, args.key), per_image_scores(args.b, key_b),
                      resamples=args.resamples, seed=args.seed)
    except CompareError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    out.update(a={"file": args.a, "key": args.key}, b={"file": args.b, "key": key_b})
    print(table(out, f"{args.a} {args.key}", f"{args.b} {key_b}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
