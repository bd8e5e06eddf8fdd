"""TEE size and CPU latency per image at its input size (random weights: timing does not depend on them).

    python -m benchmarks.tee_speed [--tee tee-d0] [--classes 601] [--repeats 10] [--threads N]

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tee_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--tee", nargs="+", default=["tee-d0", "tee-tiny"])
    ap.add_argument("--classes", type=int, default=601, help="601: the Open Images boxable classes")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--image", default="480x640", help="HxW of the test image (letterboxed by the TEE)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.image.lower().split("x"))
    rows = [measure(name, args.classes, args.repeats, h, w) for name in args.tee]
    print("| TEE | input | classes | parameters | CPU ms/image (median) | min-max | threads |")
    print("|---|---|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['tee']} | {r['image_size']} ({r['input']} letterboxed) | {r['classes']} | "
              f"{r['params'] / 1e6:.2f} M | {r['ms_median']} | {r['ms_min']}-{r['ms_max']} | {r['threads']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
