"""TEE size and CPU latency per image at its input size (random weights: timing does not depend on them).

    python -m benchmarks.tee_speed [--tee tee-d0] [--classes 601] [--repeats 10] [--threads N]
    python -m benchmarks.tee_speed --forms --tee tee-d0 --classes 1600 --repeats 21   # folded, class-agnostic

Batch 1, inference mode, warm-up excluded; median and spread over repeats of a full
`extract` (letterbox, backbone, BiFPN, RPN, RoIAlign, box head, NMS, copies back).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch


def measure(name: str, num_classes: int, repeats: int, height: int, width: int) -> dict:
    from models.tee import build_tee

    classes = tuple((f"/c/{i}", f"class {i}") for i in range(num_classes))
    model = build_tee(name, classes=classes).eval()
    image = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    for _ in range(3):
        model.extract([image])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.extract([image])
        times.append((time.perf_counter() - t0) * 1000)
    parts = {"backbone": model.backbone, "bifpn": model.fpn, "rpn": model.rpn, "box_head": model.roi_heads}
    return {"tee": name, "image_size": model.config.image_size, "classes": num_classes,
            "input": f"{width}x{height}", "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in model.parameters()),
            "params_by_part": {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()},
            "ms_median": round(statistics.median(times), 1), "ms_min": round(min(times), 1),
            "ms_max": round(max(times), 1), "repeats": repeats}


# The TEE's cheaper forms (docs/tee.md): (class_agnostic_boxes, batch norms folded)
FORMS = {"as trained": (False, False), "folded": (False, True), "class-agnostic": (True, False),
         "class-agnostic, folded": (True, True)}


def measure_forms(name: str, num_classes: int, repeats: int, height: int, width: int) -> list[dict]:
    """Every FORMS variant of one TEE, timed interleaved (A B C D A B C D ...); ratios pair by pair."""
    from models.tee import build_tee

    classes = tuple((f"/c/{i}", f"class {i}") for i in range(num_classes))
    image = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    models, params = {}, {}
    for label, (agnostic, fold) in FORMS.items():
        model = build_tee(name, classes=classes, seed=0, class_agnostic_boxes=agnostic).eval()
        params[label] = sum(p.numel() for p in model.parameters())  # as saved, before folding
        if fold:
            model.fold_batchnorms()
        models[label] = model
    times = {label: [] for label in FORMS}
    for i in range(3 + repeats):
        for label, model in models.items():
            t0 = time.perf_counter()
            model.extract([image])
            if i >= 3:  # warm-up excluded
                times[label].append((time.perf_counter() - t0) * 1000)
    base = times["as trained"]
    return [{"tee": name, "form": label, "classes": num_classes, "input": f"{width}x{height}",
             "threads": torch.get_num_threads(), "params": params[label],
             "ms_median": round(statistics.median(t), 1), "ms_min": round(min(t), 1), "ms_max": round(max(t), 1),
             "speedup": round(statistics.median([b / x for b, x in zip(base, t)]), 3), "repeats": repeats}
            for label, t in times.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tee_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--tee", nargs="+", default=["tee-d0", "tee-tiny"])
    ap.add_argument("--classes", type=int, default=601, help="601: the Open Images boxable classes")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--image", default="480x640", help="HxW of the test image (letterboxed by the TEE)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--forms", action="store_true",
                    help="instead: each TEE as trained, batch norms folded, class-agnostic boxes, both; interleaved")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.image.lower().split("x"))
    if args.forms:
        rows = [r for name in args.tee for r in measure_forms(name, args.classes, args.repeats, h, w)]
        lines = [f"{args.classes} classes, image {args.image}, {torch.get_num_threads()} threads; median (min-max) "
                 f"of {args.repeats} interleaved runs; speed-up: as trained / this form, pair by pair (median).",
                 "| TEE | form | parameters | CPU ms/image | min-max | speed-up |", "|---|---|---:|---:|---|---:|"]
        lines += [f"| {r['tee']} | {r['form']} | {r['params'] / 1e6:.2f} M | {r['ms_median']} | "
                  f"{r['ms_min']}-{r['ms_max']} | {r['speedup']:.2f}x |" for r in rows]
    else:
        rows = [measure(name, args.classes, args.repeats, h, w) for name in args.tee]
        lines = ["| TEE | input | classes | parameters | CPU ms/image (median) | min-max | threads |",
                 "|---|---|---:|---:|---:|---|---:|"]
        lines += [f"| {r['tee']} | {r['image_size']} ({r['input']} letterboxed) | {r['classes']} | "
                  f"{r['params'] / 1e6:.2f} M | {r['ms_median']} | {r['ms_min']}-{r['ms_max']} | {r['threads']} |"
                  for r in rows]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0

if __name__ == "__main__":
    sys.exit(main())
