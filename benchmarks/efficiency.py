"""MiniVLM vs its baseline, side by side in one process: parameters, FLOPs, latency per image.

    python -m benchmarks.efficiency [--json PATH] [--threads N] [--repeats N] [--device cpu|cuda]

Baseline (as in the MiniVLM paper): a bottom-up-attention Faster R-CNN, ResNet-101 C4
(conv1..layer3 as the backbone at 600x1000, an RPN on its stride-16 map, all 300
post-NMS proposals RoI-aligned to 14x14 and run through layer4 as the box head,
class-aware NMS keeping ~50 regions with 2048-d features) + a BERT-base fusion (12 x 768)
over 35 caption + 15 tag tokens + 50 regions of 2048+6 dims. MiniVLM: the TEE (tee-d0 at
512) + the MiniLM fusion (12 x 384) over the same sequence with TEE features. Both sides
use torchvision's detection pieces and the same region selection code.

All weights are random: latency does not depend on weight values (the NMS inputs
differ, but the kept count is fixed at 50 on both sides). Latency is batch 1, inference
mode, warm-up excluded, the pairs measured interleaved (A B A B ...) so drift hits both;
median and min-max over --repeats. FLOPs come from torch.utils.flop_counter (matmuls and
convolutions; RoIAlign and NMS are not counted).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAPER = {"size": -73.0, "time": -94.0, "vision_time": -95.0}
TARGETS = {"params_ratio": 0.27, "time_ratio": 0.06, "vision_time_ratio": 0.05}
CAPTION, TAGS, REGIONS = 35, 15, 50


class BaselineVision(nn.Module):
    """Faster R-CNN ResNet-101 C4, bottom-up-attention style: image -> 50 regions x 2048-d."""

    def __init__(self, num_classes: int = 1600, proposals: int = 300, regions: int = REGIONS):
        super().__init__()
        from torchvision.models import resnet101
        from torchvision.models.detection._utils import BoxCoder
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
        from torchvision.ops import RoIAlign

        r = resnet101(zero_init_residual=True)  # random but with sane activations: boxes stay finite
        self.body = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)  # stride 16
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),))
        self.rpn = RegionProposalNetwork(anchors, RPNHead(1024, 15), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
                                         batch_size_per_image=256, positive_fraction=0.5,
                                         pre_nms_top_n=dict(training=12000, testing=6000),
                                         post_nms_top_n=dict(training=2000, testing=proposals), nms_thresh=0.7)
        self.pool = RoIAlign(output_size=14, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
        self.head = r.layer4  # (R, 1024, 14, 14) -> (R, 2048, 7, 7)
        self.cls_score = nn.Linear(2048, num_classes + 1)
        self.bbox_pred = nn.Linear(2048, (num_classes + 1) * 4)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.regions = regions

    @torch.inference_mode()
    def extract(self, image: torch.Tensor) -> dict:
        """(3, H, W) uint8 -> regions (shorter side resized to 600, longer to at most 1000)."""
        from torchvision.models.detection.image_list import ImageList

        from models.tee import select_regions

        h, w = image.shape[1:]
        scale = min(600 / min(h, w), 1000 / max(h, w))
        x = F.interpolate(image[None].float() / 255.0, scale_factor=scale, mode="bilinear", align_corners=False)
        x = (x - 0.45) / 0.225
        size = tuple(x.shape[-2:])
        feats = self.body(x)  # (1, 1024, H/16, W/16)
        proposals, _ = self.rpn(ImageList(x, [size]), {"c4": feats})
        roi = self.pool(feats, proposals)  # (300, 1024, 14, 14)
        pooled = self.head(roi).mean(dim=(2, 3))  # (300, 2048)
        logits, deltas = self.cls_score(pooled), self.bbox_pred(pooled)
        boxes = self.box_coder.decode(deltas, proposals)  # (300, K+1, 4)
        return select_regions(boxes, F.softmax(logits, -1), pooled, size, candidate_thresh=0.01, nms_thresh=0.3,
                              score_thresh=0.2, min_regions=self.regions, num_regions=self.regions)


def fusion_inputs(model, regions: dict, device) -> dict:
    """A fixed-length batch of one: 35 caption + 15 tag tokens and the extracted regions."""
    c = model.config
    t = c.text_length
    ids = torch.randint(1000, c.vocab_size, (1, t), device=device)
    types = torch.zeros(1, t, dtype=torch.long, device=device)
    types[:, CAPTION + 2:] = 1
    feats = regions["features"][None].to(device)
    n = feats.shape[1]
    boxes = torch.rand(1, n, 4, device=device).sort(dim=-1).values
    return {"input_ids": ids, "token_type_ids": types, "text_mask": torch.ones(1, t, device=device),
            "region_features": feats, "region_boxes": boxes, "region_mask": torch.ones(1, n, device=device)}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build(device: str, classes: int):
    from models.minivlm import MiniVLM, MiniVLMConfig
    from models.tee import build_tee

    names = tuple((f"/c/{i}", f"class {i}") for i in range(classes))
    torch.manual_seed(0)
    base_vision = BaselineVision(num_classes=classes).eval().to(device)
    base_fusion = MiniVLM(MiniVLMConfig(hidden_size=768, num_heads=12, intermediate_size=3072,
                                        region_feature_dim=2048, max_caption_tokens=CAPTION,
                                        max_tag_tokens=TAGS, max_regions=REGIONS)).eval().to(device)
    tee = build_tee("tee-d0", classes=names).eval().to(device)
    fusion = MiniVLM(MiniVLMConfig(region_feature_dim=tee.config.feature_dim, max_caption_tokens=CAPTION,
                                   max_tag_tokens=TAGS, max_regions=REGIONS)).eval().to(device)
    return base_vision, base_fusion, tee, fusion


def _fusion_params(m) -> int:
    """Fusion parameters that inference uses (the pre-training heads are not part of it)."""
    return count(m.bert) + count(m.regions)


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.efficiency", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--classes", type=int, default=1600, help="detector classes on both sides (Visual Genome: 1600)")
    ap.add_argument("--image", default="480x640", help="HxW of the test photo")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("efficiency: --device cuda but CUDA is not available here")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    h, w = (int(v) for v in args.image.lower().split("x"))
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))

    base_vision, base_fusion, tee, fusion = build(device, args.classes)
    img_chw = image.permute(2, 0, 1).to(device)
    img_hwc = image.numpy()

    def baseline_vision():
        return base_vision.extract(img_chw)

    def tee_vision():
        return tee.detect(tee.prepare([img_hwc]))[0]

    base_inputs = fusion_inputs(base_fusion, baseline_vision(), device)
    mini_inputs = fusion_inputs(fusion, tee_vision(), device)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn()
        sync()
        return (time.perf_counter() - t0) * 1000

    parts = {
        "baseline_vision": baseline_vision,
        "baseline_fusion": lambda: base_fusion.encode(**base_inputs),
        "tee": tee_vision,
        "minivlm_fusion": lambda: fusion.encode(**mini_inputs),
    }
    for _ in range(args.warmup):
        for fn in parts.values():
            timed(fn)
    times = {k: [] for k in parts}
    for _ in range(args.repeats):  # interleaved: A B A B ...
        for k, fn in parts.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    with torch.inference_mode():
        gf = {k: flops(fn) / 1e9 for k, fn in parts.items()}

    r = {
        "baseline_params": count(base_vision) + _fusion_params(base_fusion),
        "minivlm_params": count(tee) + _fusion_params(fusion),
        "baseline_vision_params": count(base_vision), "tee_params": count(tee),
        "baseline_fusion_params": _fusion_params(base_fusion), "minivlm_fusion_params": _fusion_params(fusion),
        "baseline_ms": med["baseline_vision"] + med["baseline_fusion"], "minivlm_ms": med["tee"] + med["minivlm_fusion"],
        "baseline_vision_ms": med["baseline_vision"], "tee_ms": med["tee"],
        "baseline_fusion_ms": med["baseline_fusion"], "minivlm_fusion_ms": med["minivlm_fusion"],
        "baseline_gflops": gf["baseline_vision"] + gf["baseline_fusion"], "minivlm_gflops": gf["tee"] + gf["minivlm_fusion"],
        "gflops_by_part": gf, "ms_by_part": {k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in times.items()},
        "settings": {"device": device, "threads": torch.get_num_threads(), "repeats": args.repeats,
                     "image": args.image, "classes": args.classes, "regions": REGIONS,
                     "tokens": {"caption": CAPTION, "tags": TAGS}, "weights": "random (timing does not depend on them)",
                     "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                     "torch": torch.__version__},
    }
    r["params_ratio"] = r["minivlm_params"] / r["baseline_params"]
    r["time_ratio"] = r["minivlm_ms"] / r["baseline_ms"]
    r["vision_time_ratio"] = r["tee_ms"] / r["baseline_vision_ms"]
    r["targets_met"] = {k: r[k] <= v for k, v in TARGETS.items()}
    print(table(r, times))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


def table(r: dict, times: dict) -> str:
    def pct(ratio):
        return f"{(ratio - 1) * 100:+.1f}%"

    def spread(k):
        return f"{min(times[k]):.0f}-{max(times[k]):.0f}"

    s = r["settings"]
    rows = [
        f"Random weights; {s['device']}, {s['threads']} threads, batch 1, image {s['image']}, "
        f"median of {s['repeats']} interleaved repeats.",
        "",
        "| | baseline (R101-C4 Faster R-CNN + BERT-base) | MiniVLM (TEE + MiniLM-12x384) | change | paper | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| parameters, vision | {r['baseline_vision_params'] / 1e6:.1f} M | {r['tee_params'] / 1e6:.1f} M | "
        f"{pct(r['tee_params'] / r['baseline_vision_params'])} | | |",
        f"| parameters, fusion | {r['baseline_fusion_params'] / 1e6:.1f} M | {r['minivlm_fusion_params'] / 1e6:.1f} M | "
        f"{pct(r['minivlm_fusion_params'] / r['baseline_fusion_params'])} | | |",
        f"| parameters, total | {r['baseline_params'] / 1e6:.1f} M | {r['minivlm_params'] / 1e6:.1f} M | "
        f"{pct(r['params_ratio'])} | {PAPER['size']:+.0f}% | <= 27% of baseline: "
        f"{'met' if r['targets_met']['params_ratio'] else 'missed'} |",
        f"| GFLOPs per image | {r['baseline_gflops']:.1f} | {r['minivlm_gflops']:.1f} | "
        f"{pct(r['minivlm_gflops'] / r['baseline_gflops'])} | | |",
        f"| vision ms | {r['baseline_vision_ms']:.0f} ({spread('baseline_vision')}) | {r['tee_ms']:.0f} "
        f"({spread('tee')}) | {pct(r['vision_time_ratio'])} | {PAPER['vision_time']:+.0f}% | <= 5%: "
        f"{'met' if r['targets_met']['vision_time_ratio'] else 'missed'} |",
        f"| fusion ms | {r['baseline_fusion_ms']:.1f} ({spread('baseline_fusion')}) | {r['minivlm_fusion_ms']:.1f} "
        f"({spread('minivlm_fusion')}) | {pct(r['minivlm_fusion_ms'] / r['baseline_fusion_ms'])} | | |",
        f"| total ms | {r['baseline_ms']:.0f} | {r['minivlm_ms']:.0f} | {pct(r['time_ratio'])} | "
        f"{PAPER['time']:+.0f}% | <= 6%: {'met' if r['targets_met']['time_ratio'] else 'missed'} |",
    ]
    return "\n".join(rows)


def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
