"""MiniVLM vs its baseline, side by side in one process: parameters, FLOPs, latency per image and per caption.

    python -m benchmarks.efficiency [--json PATH] [--threads N] [--busy N] [--regions 50] [--repeats N]
    python -m benchmarks.efficiency --study [--repeats 11] [--json PATH]   # why a busy CPU hurts

Baseline (as in the MiniVLM paper): a bottom-up-attention Faster R-CNN, ResNet-101 C4
(conv1..layer3 as the backbone at 600x1000; its RPN as in bottom-up attention: a 3x3
conv 1024 -> 512 and 12 anchors, 4 sizes (64, 128, 256, 512) x 3 ratios, on the stride-16
map; all 300 post-NMS proposals RoI-aligned to 14x14 and run through layer4 as the box
head; class-aware NMS; 2048-d region features) + a BERT-base fusion (12 x 768) over 35
caption + 15 tag tokens + the regions. MiniVLM: the TEE (tee-d0 at 512) + the MiniLM
fusion (12 x 384) over the same sequence with TEE features. Both sides use torchvision's
detection pieces and the same region selection code.

Forced knobs (random weights): no class clears a score threshold, so each side would keep
its own minimum of regions; both are forced to keep exactly --regions (min_regions =
num_regions = N) and the benchmark checks that they did. A caption is raw image ->
regions -> tags -> beam search (--beam 5, --max-length 20) with the same decoding code
(models.captioning.StudentCaptioner) on both sides; [SEP] is banned so that every
caption runs exactly --max-length steps on both sides (random weights would otherwise end
captions at unpredictable lengths). The steps each side decoded are reported.

Latency is batch 1, inference mode, warm-up excluded, every part measured interleaved
(A B A B ...) so drift hits both; median and min-max over --repeats. --busy N runs N
CPU-bound processes beside the warm-up and the timed section (a busy machine on purpose).
FLOPs come from torch.utils.flop_counter (matmuls and convolutions; RoIAlign and NMS
are not counted).

--study times the TEE alone and one MiniVLM caption under thread settings (2 vs 1 threads;
quiet, beside a busy loop, beside another torch process; OMP_WAIT_POLICY=PASSIVE, one
inter-op thread, a short GOMP_SPINCOUNT), each setting in its own child process since
OpenMP reads its environment when torch loads.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAPER = {"size": -73.0, "time": -94.0, "vision_time": -95.0}
TARGETS = {"params_ratio": 0.27, "time_ratio": 0.06, "vision_time_ratio": 0.05}
CAPTION, TAGS, REGIONS = 35, 15, 50
BUSY_CODE = "while True: pass"
# a neighbour like a test run beside the benchmark: small torch ops on PyTorch's default threads
TORCH_BUSY_CODE = "import torch\nx = torch.randn(128, 128)\nwhile True:\n    y = torch.relu(x @ x) + 1"
THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class BUARPNHead(nn.Module):
    """The bottom-up-attention RPN head (Caffe rpn_conv/3x3 + rpn_cls_score + rpn_bbox_pred) in
    torchvision's interface: features -> (objectness per level, box deltas per level).

    A 3x3 conv in_channels -> 512 + ReLU, then 1x1 convs to one objectness logit per anchor
    (torchvision's sigmoid form of Caffe's 2-way softmax) and 4 deltas per anchor."""

    def __init__(self, in_channels: int = 1024, mid_channels: int = 512, num_anchors: int = 12):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(mid_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


class BaselineVision(nn.Module):
    """Faster R-CNN ResNet-101 C4, bottom-up-attention style: image -> `regions` regions x 2048-d."""

    ANCHOR_SIZES = (64, 128, 256, 512)  # bottom-up attention: ANCHOR_SCALES 4, 8, 16, 32 x feature stride 16
    ASPECT_RATIOS = (0.5, 1.0, 2.0)

    def __init__(self, num_classes: int = 1600, proposals: int = 300, regions: int = REGIONS):
        super().__init__()
        from torchvision.models import resnet101
        from torchvision.models.detection._utils import BoxCoder
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.rpn import RegionProposalNetwork
        from torchvision.ops import RoIAlign

        r = resnet101(zero_init_residual=True)  # random but with sane activations: boxes stay finite
        self.body = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)  # stride 16
        anchors = AnchorGenerator((self.ANCHOR_SIZES,), (self.ASPECT_RATIOS,))
        head = BUARPNHead(1024, 512, anchors.num_anchors_per_location()[0])
        self.rpn = RegionProposalNetwork(anchors, head, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
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
        """(3, H, W) uint8 -> regions (shorter side resized to 600, longer to at most 1000); boxes in
        resized pixels, "size" the resized (h, w)."""
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
        out = select_regions(boxes, F.softmax(logits, -1), pooled, size, candidate_thresh=0.01, nms_thresh=0.3,
                             score_thresh=0.2, min_regions=self.regions, num_regions=self.regions)
        return {**out, "size": size}


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


def class_names(classes: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"/c/{i}", f"class {i}") for i in range(classes))


def _fusion_shape(regions: int, tokenizer) -> dict:
    ids = {} if tokenizer is None else dict(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id)
    return dict(max_caption_tokens=CAPTION, max_tag_tokens=TAGS, max_regions=regions, task="captioning", **ids)


def build_minivlm(device: str, classes: int, regions: int = REGIONS, tokenizer=None,
                  class_agnostic: bool | None = None):
    """(TEE, MiniLM fusion with the TEE attached), random, captioning-ready, holding `regions` regions."""
    from models.minivlm import MiniVLM, MiniVLMConfig
    from models.tee import build_tee

    # random weights clear no score threshold: force the TEE to keep exactly `regions`, like the baseline
    boxes = {} if class_agnostic is None else {"class_agnostic_boxes": class_agnostic}  # None: tee-d0's own
    tee = build_tee("tee-d0", classes=class_names(classes), min_regions=regions, num_regions=regions, **boxes)
    fusion = MiniVLM(MiniVLMConfig(region_feature_dim=tee.config.feature_dim, **_fusion_shape(regions, tokenizer)),
                     tee).eval().to(device)
    return tee, fusion


def build(device: str, classes: int, regions: int = REGIONS, tokenizer=None, proposals: int = 300,
          class_agnostic: bool | None = None):
    """(baseline vision, BERT-base fusion, TEE, MiniLM fusion with the TEE attached), all random, both
    fusions captioning-ready and holding `regions` regions."""
    from models.minivlm import MiniVLM, MiniVLMConfig

    shared = _fusion_shape(regions, tokenizer)
    torch.manual_seed(0)
    base_vision = BaselineVision(num_classes=classes, proposals=proposals, regions=regions).eval().to(device)
    base_fusion = MiniVLM(MiniVLMConfig(hidden_size=768, num_heads=12, intermediate_size=3072,
                                        region_feature_dim=2048, **shared)).eval().to(device)
    tee, fusion = build_minivlm(device, classes, regions, tokenizer, class_agnostic)
    return base_vision, base_fusion, tee, fusion


def _fusion_params(m) -> int:
    """Fusion parameters that inference uses (the pre-training heads are not part of it)."""
    return count(m.bert) + count(m.regions)


def supports_cache() -> bool:
    """Whether StudentCaptioner decodes with a `cache` switch (cached incremental decoding)."""
    from models.captioning import StudentCaptioner

    return all("cache" in inspect.signature(f).parameters
               for f in (StudentCaptioner.__call__, StudentCaptioner.caption_regions))


@contextlib.contextmanager
def busy_cpu(n: int, code: str = BUSY_CODE):
    """N CPU-bound child processes for the duration; always killed (and reaped) on the way out.

    They run with PyTorch's default thread settings, whatever this process was started with."""
    procs = []
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        if procs:
            time.sleep(0.5 if code == BUSY_CODE else 3.0)  # let them start spinning before anything is timed
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        for p in procs:
            p.wait()


def ban_sep(captioner) -> bool:
    """Ban [SEP] so every caption decodes exactly max_length steps; False where the captioner has no ban list."""
    if not isinstance(getattr(captioner, "banned", None), list):
        return False
    captioner.banned = sorted({*captioner.banned, captioner.config.sep_token_id})
    return True


class StepCounter:
    """Counts calls of a model's masked-token head: one per decoding step (a step scores all beams at once)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.mlm.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def __call__(self, fn):
        def counted():
            self.calls = 0
            out = fn()
            counted.steps.append(self.calls)
            return out

        counted.steps = []
        return counted


# ---- why a busy CPU hurts: one setting per child process (thread settings must precede torch) ----

STUDY = (  # (label, environment, probe flags)
    ("2 threads, quiet", {}, []),
    ("1 thread, quiet", {}, ["--threads", "1"]),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE, quiet", {"OMP_WAIT_POLICY": "PASSIVE"}, []),
    ("2 threads, --busy 1", {}, ["--busy", "1"]),
    ("1 thread, --busy 1", {}, ["--threads", "1", "--busy", "1"]),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE, --busy 1", {"OMP_WAIT_POLICY": "PASSIVE"}, ["--busy", "1"]),
    ("2 threads, set_num_interop_threads(1), --busy 1", {}, ["--interop-threads", "1", "--busy", "1"]),
    ("2 threads, GOMP_SPINCOUNT=10000, --busy 1", {"GOMP_SPINCOUNT": "10000"}, ["--busy", "1"]),
    ("2 threads, beside a 2-thread torch process", {}, ["--busy-torch", "1"]),
    ("1 thread, beside a 2-thread torch process", {}, ["--threads", "1", "--busy-torch", "1"]),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE, beside a 2-thread torch process", {"OMP_WAIT_POLICY": "PASSIVE"},
     ["--busy-torch", "1"]),
)


def _measure(fn, repeats: int, warmup: int) -> dict:
    """Wall and CPU time of `fn`: median (min-max) ms, and this process's CPU time per wall time."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {"median_ms": statistics.median(wall), "min_ms": min(wall), "max_ms": max(wall),
            "cpu_per_wall": sum(cpu) / sum(wall)}


def probe(args) -> dict:
    """The TEE alone and one whole MiniVLM caption (cached where available), in this process's thread settings."""
    from models.captioning import StudentCaptioner
    from models.minivlm import bundled_bert_dir, load_tokenizer

    tokenizer = load_tokenizer(bundled_bert_dir())
    tee, fusion = build_minivlm("cpu", args.classes, args.regions, tokenizer)
    captioner = StudentCaptioner(fusion, tokenizer, source="benchmark")
    forced = ban_sep(captioner)
    kw = {"cache": True} if supports_cache() else {}
    h, w = (int(v) for v in args.image.lower().split("x"))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    with torch.inference_mode(), busy_cpu(args.busy), busy_cpu(args.busy_torch, TORCH_BUSY_CODE):
        tee_ms = _measure(lambda: tee.detect(tee.prepare([image])), args.repeats, args.warmup)
        caption_ms = (_measure(lambda: captioner([image], beam_size=args.beam, max_length=args.max_length, **kw),
                               args.caption_repeats, min(1, args.warmup)) if args.caption_repeats else None)
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "busy": args.busy, "busy_torch": args.busy_torch, "env": {k: os.environ.get(k) for k in THREAD_ENV},
            "tee": tee_ms, "caption": caption_ms, "cache": bool(kw), "forced_length": forced}


def study(args) -> dict:
    """Every STUDY setting in its own child process, one after the other -> a table of TEE and caption times."""
    passed = ["--classes", str(args.classes), "--regions", str(args.regions), "--image", args.image,
              "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--caption-repeats",
              str(args.caption_repeats), "--beam", str(args.beam), "--max-length", str(args.max_length)]
    base_env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    results = []
    for label, env, flags in STUDY:
        out = subprocess.run([sys.executable, "-m", "benchmarks.efficiency", "--probe", *passed, *flags],
                             env={**base_env, **env}, capture_output=True, text=True, check=True)
        results.append({"setting": label, **json.loads(out.stdout.strip().splitlines()[-1])})
        print(f"  {label}: TEE {results[-1]['tee']['median_ms']:.0f} ms", file=sys.stderr, flush=True)

    def cell(m):
        return "" if m is None else f"{m['median_ms']:,.0f} ({m['min_ms']:,.0f}-{m['max_ms']:,.0f})"

    rows = [f"tee-d0 at 512, {args.regions} regions, {args.classes} classes, image {args.image}; one cached "
            f"caption = beam {args.beam} x {args.max_length} steps. Median (min-max) of {args.repeats} TEE runs "
            f"and {args.caption_repeats} captions, each setting its own process.", "",
            "| setting | TEE ms | caption ms | CPU time / wall time, TEE |", "|---|---:|---:|---:|"]
    rows += [f"| {r['setting']} | {cell(r['tee'])} | {cell(r['caption'])} | {r['tee']['cpu_per_wall']:.2f} |"
             for r in results]
    print("\n".join(rows))
    report = {"study": results, "settings": {"classes": args.classes, "regions": args.regions, "image": args.image,
                                             "repeats": args.repeats, "caption_repeats": args.caption_repeats,
                                             "beam": args.beam, "max_length": args.max_length,
                                             "torch": torch.__version__}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.efficiency", description=__doc__.splitlines()[0],
                                 allow_abbrev=False)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--busy", type=int, default=0,
                    help="CPU-bound processes to run beside the warm-up and the timed section")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--classes", type=int, default=1600, help="detector classes on both sides (Visual Genome: 1600)")
    ap.add_argument("--regions", type=int, default=REGIONS, help="regions both sides keep (forced)")
    ap.add_argument("--image", default="480x640", help="HxW of the test photo")
    ap.add_argument("--proposals", type=int, default=300,
                    help="baseline RPN proposals through layer4 (300 as in bottom-up attention's test setting; "
                         "fewer only to keep tests fast)")
    ap.add_argument("--beam", type=int, default=5, help="caption beam size, both sides")
    ap.add_argument("--max-length", type=int, default=20, help="caption tokens, both sides (every caption runs them all)")
    ap.add_argument("--class-agnostic-boxes", action=argparse.BooleanOptionalAction, default=None,
                    help="the TEE's box refinement: one for all classes (4 outputs), or (--no-...) one per class "
                         "((classes+1) x 4); unset: tee-d0's registered choice")
    ap.add_argument("--no-fold", action="store_true",
                    help="time the TEE with its batch norms as trained (default: folded, as caption and the "
                         "feature job run it; the unfolded TEE is then timed beside it)")
    ap.add_argument("--no-caption", action="store_true", help="skip the whole-caption timings")
    ap.add_argument("--no-onnx", action="store_true",
                    help="skip the deployment rows (the MiniVLM exported to ONNX, run by ONNX Runtime, fp32 and int8)")
    ap.add_argument("--int8-quality", default=None, metavar="JSON",
                    help="a benchmarks.caption_learning --export --json result: its int8 / eager fp32 CIDEr-D ratio "
                         "(measured on a trained model; random weights here say nothing of quality) goes in the "
                         "table and the JSON as int8_cider_ratio")
    ap.add_argument("--no-uncached-baseline", action="store_true",
                    help="skip the baseline's uncached caption (the slowest part)")
    ap.add_argument("--study", action="store_true",
                    help="instead: why a busy CPU hurts; the TEE and one MiniVLM caption under thread settings "
                         "(2 vs 1 threads, quiet vs --busy 1 vs a torch neighbour, OMP_WAIT_POLICY=PASSIVE, ...), "
                         "each in its own process")
    ap.add_argument("--caption-repeats", type=int, default=3, help="--study: captions per setting")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # one --study setting
    ap.add_argument("--busy-torch", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--interop-threads", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)  # before any parallel work: --probe runs alone
    if args.regions < 1 or args.busy < 0 or args.repeats < 1 or args.warmup < 0 or args.proposals < args.regions:
        ap.error("--regions and --repeats must be >= 1, --busy and --warmup >= 0, --proposals >= --regions")
    if not 1 <= args.max_length <= CAPTION:
        ap.error(f"--max-length must be in [1, {CAPTION}]")
    if args.threads:
        torch.set_num_threads(args.threads)
    quality = int8_quality(args.int8_quality)  # a wrong file fails now, not after the timings
    if args.probe:
        r = probe(args)
        print(json.dumps(r))
        return r
    if args.study:
        return study(args)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("efficiency: --device cuda but CUDA is not available here")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    h, w = (int(v) for v in args.image.lower().split("x"))
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))

    from models.captioning import StudentCaptioner, tags_from_regions
    from models.minivlm import bundled_bert_dir, load_tokenizer

    tokenizer = load_tokenizer(bundled_bert_dir())
    base_vision, base_fusion, tee, fusion = build(device, args.classes, args.regions, tokenizer,
                                                args.proposals, args.class_agnostic_boxes)
    tee_params = count(tee)  # as trained and saved, before any folding
    deploy = not (args.no_onnx or args.no_caption)
    work = tempfile.mkdtemp(prefix="efficiency_") if deploy else None
    if deploy:  # the checkpoint as pipelines.finetune_caption would write it: its file size
        fusion.save_pretrained(os.path.join(work, "checkpoint"), tokenizer)
    tee_plain = copy.deepcopy(tee).eval()  # timed beside the folded one: what folding buys
    folded = 0 if args.no_fold else tee.fold_batchnorms()  # the library's inference form (caption, feature job)
    names = [n for _, n in class_names(args.classes)]
    img_chw = image.permute(2, 0, 1).to(device)
    img_hwc = image.numpy()

    def baseline_vision():
        return base_vision.extract(img_chw)

    def tee_vision():
        return tee.detect(tee.prepare([img_hwc]))[0]

    base_regions, tee_regions = baseline_vision(), tee_vision()
    counts = {"baseline": len(base_regions["features"]), "minivlm": len(tee_regions["features"])}
    if counts != {"baseline": args.regions, "minivlm": args.regions}:
        raise RuntimeError(f"efficiency: both sides must keep {args.regions} regions, kept {counts}")
    base_inputs = fusion_inputs(base_fusion, base_regions, device)
    mini_inputs = fusion_inputs(fusion, tee_regions, device)

    parts = {
        "baseline_vision": baseline_vision,
        "tee": tee_vision,
        "baseline_fusion": lambda: base_fusion.encode(**base_inputs),
        "minivlm_fusion": lambda: fusion.encode(**mini_inputs),
    }
    single = list(parts)  # one forward pass each: FLOPs are counted for these
    if folded:
        parts["tee_unfolded"] = lambda: tee_plain.detect(tee_plain.prepare([img_hwc]))[0]
    cache = supports_cache()
    forced_length = False
    steps: dict[str, list[int]] = {}
    if not args.no_caption:
        mini_cap = StudentCaptioner(fusion, tokenizer, source="benchmark")
        base_cap = StudentCaptioner(base_fusion, tokenizer, source="benchmark")
        forced_length = all([ban_sep(mini_cap), ban_sep(base_cap)])

        def baseline_caption(**kw):
            reg = baseline_vision()
            rh, rw = reg["size"]
            boxes = (reg["boxes"].float().cpu() / torch.tensor([rw, rh, rw, rh])).clamp(0, 1).numpy()
            tags = tags_from_regions([names[k - 1] for k in reg["classes"].tolist()], reg["scores"].tolist(),
                                     base_cap.config.tag_min_score)
            return base_cap.caption_regions([reg["features"].float().cpu().numpy()], [boxes], [tags],
                                            beam_size=args.beam, max_length=args.max_length, **kw)[0]

        def minivlm_caption(**kw):
            return mini_cap([img_hwc], beam_size=args.beam, max_length=args.max_length, **kw)[0]

        base_steps, mini_steps = StepCounter(base_fusion), StepCounter(fusion)
        on = {"cache": True} if cache else {}
        parts["baseline_caption"] = base_steps(lambda: baseline_caption(**on))
        parts["minivlm_caption"] = mini_steps(lambda: minivlm_caption(**on))
        if cache:
            parts["minivlm_caption_uncached"] = mini_steps(lambda: minivlm_caption(cache=False))
            if not args.no_uncached_baseline:
                parts["baseline_caption_uncached"] = base_steps(lambda: baseline_caption(cache=False))

    if deploy:
        onnx, sizes = deployment(fusion, tokenizer, work)
        for captioner in onnx.values():
            ban_sep(captioner)
        found = len(onnx["fp32"].regions([img_hwc])[0]["features"])  # int8's TEE graph is the same fp32 one
        if found != args.regions:
            raise RuntimeError(f"efficiency: the export kept {found} regions, not {args.regions}")
        parts["onnx_vision"] = lambda: onnx["fp32"].regions([img_hwc])[0]
        parts["onnx_caption"] = lambda: onnx["fp32"]([img_hwc], beam_size=args.beam, max_length=args.max_length)[0]
        parts["int8_caption"] = lambda: onnx["int8"]([img_hwc], beam_size=args.beam, max_length=args.max_length)[0]

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn()
        sync()
        return (time.perf_counter() - t0) * 1000

    times = {k: [] for k in parts}
    with busy_cpu(args.busy) as procs:
        busy_pids = [p.pid for p in procs]
        busy_alive = sum(p.poll() is None for p in procs)
        for _ in range(args.warmup):
            for fn in parts.values():
                timed(fn)
        for _ in range(args.repeats):  # interleaved: A B A B ...
            for k, fn in parts.items():
                times[k].append(timed(fn))
        busy_alive = min(busy_alive, sum(p.poll() is None for p in procs))  # still running at the end
    med = {k: statistics.median(v) for k, v in times.items()}
    with torch.inference_mode():
        gf = {k: flops(parts[k]) / 1e9 for k in single}
    for k, fn in parts.items():
        if hasattr(fn, "steps"):
            steps[k] = sorted(set(fn.steps))

    threads = torch.get_num_threads()
    r = {
        "baseline_params": count(base_vision) + _fusion_params(base_fusion),
        "minivlm_params": tee_params + _fusion_params(fusion),
        "baseline_vision_params": count(base_vision), "tee_params": tee_params,
        "baseline_fusion_params": _fusion_params(base_fusion), "minivlm_fusion_params": _fusion_params(fusion),
        "baseline_ms": med["baseline_vision"] + med["baseline_fusion"], "minivlm_ms": med["tee"] + med["minivlm_fusion"],
        "baseline_vision_ms": med["baseline_vision"], "tee_ms": med["tee"],
        "baseline_fusion_ms": med["baseline_fusion"], "minivlm_fusion_ms": med["minivlm_fusion"],
        "baseline_gflops": gf["baseline_vision"] + gf["baseline_fusion"], "minivlm_gflops": gf["tee"] + gf["minivlm_fusion"],
        "baseline_regions": counts["baseline"], "minivlm_regions": counts["minivlm"],
        "threads": threads, "busy": args.busy,
        "gflops_by_part": gf, "ms_by_part": {k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in times.items()},
        "settings": {"device": device, "threads": threads, "interop_threads": torch.get_num_interop_threads(),
                     "busy_processes": args.busy, "busy_pids": busy_pids, "busy_alive": busy_alive,
                     "repeats": args.repeats, "warmup": args.warmup,
                     "image": args.image, "proposals": args.proposals,
                     "classes": args.classes, "regions": args.regions,
                     "tee": {"batchnorms_folded": folded, "class_agnostic_boxes": tee.config.class_agnostic_boxes},
                     "tokens": {"caption": CAPTION, "tags": TAGS}, "weights": "random (timing does not depend on them)",
                     "forced": {"regions": f"min_regions = num_regions = {args.regions} on both sides (random weights "
                                           "clear no score threshold)",
                                "caption_length": (f"[SEP] banned: every caption decodes {args.max_length} steps"
                                                   if forced_length else "not forced (decoded steps reported)")},
                     "machine": f"{platform.processor() or platform.machine()}, {threads} threads",
                     "torch": torch.__version__},
    }
    if not args.no_caption:
        r["baseline_caption_ms"] = med["baseline_caption"]
        r["minivlm_caption_ms"] = med["minivlm_caption"]
        r["caption_ratio"] = r["minivlm_caption_ms"] / r["baseline_caption_ms"]
        if "minivlm_caption_uncached" in med:
            r["minivlm_caption_uncached_ms"] = med["minivlm_caption_uncached"]
            r["minivlm_cache_speedup"] = r["minivlm_caption_uncached_ms"] / r["minivlm_caption_ms"]
        if "baseline_caption_uncached" in med:
            r["baseline_caption_uncached_ms"] = med["baseline_caption_uncached"]
            r["baseline_cache_speedup"] = r["baseline_caption_uncached_ms"] / r["baseline_caption_ms"]
            r["caption_uncached_ratio"] = r["minivlm_caption_uncached_ms"] / r["baseline_caption_uncached_ms"]
        r["caption_steps"] = steps
        r["settings"]["caption"] = {"beam": args.beam, "max_length": args.max_length, "cache": cache,
                                    "forced_length": forced_length,
                                    "decoding": "models.captioning.StudentCaptioner, both sides"}
    if deploy:
        r.update({"onnx_caption_ms": med["onnx_caption"], "int8_caption_ms": med["int8_caption"],
                  "onnx_vision_ms": med["onnx_vision"], **sizes,
                  "int8_cider_ratio": quality})
        r["settings"]["deployment"] = {
            "onnx": "pipelines.export's graphs (models.export), run by models.runtime: ONNX Runtime "
                    f"{onnx_runtime_version()} CPU provider, {torch.get_num_threads()} intra-op threads",
            "int8": "dynamic int8 of the fusion's MatMul/Gemm weights; the TEE stays fp32",
            "int8_cider_ratio": args.int8_quality or "not given (--int8-quality JSON)"}
        shutil.rmtree(work, ignore_errors=True)
    if folded:
        r["tee_unfolded_ms"] = med["tee_unfolded"]
        r["tee_fold_speedup"] = r["tee_unfolded_ms"] / r["tee_ms"]
    r["params_ratio"] = r["minivlm_params"] / r["baseline_params"]
    r["time_ratio"] = r["minivlm_ms"] / r["baseline_ms"]
    r["vision_time_ratio"] = r["tee_ms"] / r["baseline_vision_ms"]
    r["targets_met"] = {k: r[k] <= v for k, v in TARGETS.items()}
    print(table(r, times))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


def deployment(fusion, tokenizer, work: str) -> tuple[dict, dict]:
    """The MiniVLM (TEE attached) exported as pipelines.export exports it, fp32 and int8 -> their
    ONNX Runtime captioners, and the files' MB (the checkpoint's, saved in `work` before, too)."""
    from models.export import export_captioner
    from models.runtime import load_onnx_captioner

    def mb(directory, *names):
        return sum(os.path.getsize(os.path.join(work, directory, n)) for n in names) / 1e6

    out = {}
    for name, int8 in (("fp32", False), ("int8", True)):
        export_captioner(fusion, tokenizer, os.path.join(work, name), int8=int8, source="benchmark")
        out[name] = load_onnx_captioner(os.path.join(work, name), threads=torch.get_num_threads())
    sizes = {"minivlm_mb": mb("checkpoint", "model.safetensors"), "onnx_mb": mb("fp32", "vision.onnx", "fusion.onnx"),
             "int8_mb": mb("int8", "vision.onnx", "fusion.onnx"), "onnx_vision_mb": mb("fp32", "vision.onnx")}
    return out, sizes


def onnx_runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def int8_quality(path: str | None) -> float | None:
    """int8 / eager fp32 CIDEr-D from a caption_learning --export result, or None without one."""
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)["export"]["int8_quality"]["cider_ratio"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"efficiency: --int8-quality {path} is no benchmarks.caption_learning --export result "
                         f"({type(e).__name__}: {e})") from e


def table(r: dict, times: dict) -> str:
    def pct(ratio):
        return f"{(ratio - 1) * 100:+.1f}%"

    def spread(k):
        return f"{min(times[k]):.0f}-{max(times[k]):.0f}"

    s = r["settings"]
    busy = f"--busy {s['busy_processes']} (CPU-bound processes beside it)" if s["busy_processes"] else "quiet (--busy 0)"
    rows = [
        f"Random weights; {s['device']}, {s['threads']} threads, {busy}; batch 1, image {s['image']}, "
        f"median (min-max) of {s['repeats']} interleaved repeats. Forced: {s['regions']} regions on both sides"
        + (f"; captions of exactly {s['caption']['max_length']} steps (beam {s['caption']['beam']}, [SEP] banned)"
           if s.get("caption", {}).get("forced_length") else "") + ". TEE: "
        + (f"{s['tee']['batchnorms_folded']} batch norms folded" if s["tee"]["batchnorms_folded"] else "as trained")
        + (", class-agnostic boxes" if s["tee"]["class_agnostic_boxes"] else ", class-specific boxes") + ".",
        "",
        "| | baseline (R101-C4 Faster R-CNN + BERT-base) | MiniVLM (TEE + MiniLM-12x384) | change | paper | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| regions per image (forced) | {r['baseline_regions']} | {r['minivlm_regions']} | | | |",
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
        *([f"| vision ms, TEE batch norms not folded | | {r['tee_unfolded_ms']:.0f} ({spread('tee_unfolded')}) | "
           f"folding: {r['tee_fold_speedup']:.2f}x | | |"] if "tee_unfolded_ms" in r else []),
        f"| fusion ms (one pass) | {r['baseline_fusion_ms']:.1f} ({spread('baseline_fusion')}) | "
        f"{r['minivlm_fusion_ms']:.1f} ({spread('minivlm_fusion')}) | "
        f"{pct(r['minivlm_fusion_ms'] / r['baseline_fusion_ms'])} | | |",
        f"| total ms (vision + one fusion pass) | {r['baseline_ms']:.0f} | {r['minivlm_ms']:.0f} | "
        f"{pct(r['time_ratio'])} | {PAPER['time']:+.0f}% | <= 6%: {'met' if r['targets_met']['time_ratio'] else 'missed'} |",
    ]
    if "baseline_caption_ms" in r:
        c = s["caption"]
        st = r["caption_steps"]

        def steps(k):
            return "/".join(map(str, st.get(k, []))) or "?"

        label = "cached" if c["cache"] else "no cache in this build"
        rows.append(f"| decoding steps per caption (beam {c['beam']}) | {steps('baseline_caption')} | "
                    f"{steps('minivlm_caption')} | | | |")
        rows.append(f"| caption ms, image -> caption ({label}) | {r['baseline_caption_ms']:.0f} "
                    f"({spread('baseline_caption')}) | {r['minivlm_caption_ms']:.0f} ({spread('minivlm_caption')}) | "
                    f"{pct(r['caption_ratio'])} | | |")
        if "minivlm_caption_uncached_ms" in r:
            base_u = (f"{r['baseline_caption_uncached_ms']:.0f} ({spread('baseline_caption_uncached')})"
                      if "baseline_caption_uncached_ms" in r else "not measured")
            change = pct(r["caption_uncached_ratio"]) if "caption_uncached_ratio" in r else ""
            rows.append(f"| caption ms, uncached | {base_u} | {r['minivlm_caption_uncached_ms']:.0f} "
                        f"({spread('minivlm_caption_uncached')}) | {change} | | |")
            base_x = f"{r['baseline_cache_speedup']:.2f}x" if "baseline_cache_speedup" in r else ""
            rows.append(f"| cache speed-up per caption (uncached / cached) | {base_x} | "
                        f"{r['minivlm_cache_speedup']:.2f}x | | | |")
    if "onnx_caption_ms" in r:
        ratio = r["int8_cider_ratio"]
        rows += ["", "| deployment (MiniVLM) | caption ms, image -> caption | vision ms | files MB |",
                 "|---|---:|---:|---:|",
                 f"| eager fp32 (PyTorch) | {r['minivlm_caption_ms']:.0f} ({spread('minivlm_caption')}) | "
                 f"{r['tee_ms']:.0f} ({spread('tee')}) | {r['minivlm_mb']:.1f} (model.safetensors) |",
                 f"| ONNX Runtime fp32 | {r['onnx_caption_ms']:.0f} ({spread('onnx_caption')}) | "
                 f"{r['onnx_vision_ms']:.0f} ({spread('onnx_vision')}) | {r['onnx_mb']:.1f} |",
                 f"| ONNX Runtime int8 (fusion linear layers) | {r['int8_caption_ms']:.0f} ({spread('int8_caption')}) "
                 f"| {r['onnx_vision_ms']:.0f} (the fp32 TEE graph) | {r['int8_mb']:.1f} |",
                 "", "int8 CIDEr-D / eager fp32 CIDEr-D: " + (f"{ratio:.3f} (benchmarks.caption_learning --export, "
                                                               "trained synthetic check)" if ratio is not None else
                                                               "not given (--int8-quality JSON)")]
    return "\n".join(rows)


def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
