"""Teacher throughput at real size: images/s per device, batch size and dtype, bare loop vs the job.

    python -m benchmarks.teacher_throughput [--device cpu|cuda] [--images 8] [--batch-sizes 1 4]
        [--dtypes float32 ...] [--size real|tiny] [--json PATH]

The default teachers' architectures at their real sizes (BLIP-large captioner, SigLIP
so400m tagger) with random weights: each is its tiny replica (the real classes, tokenizer,
processor, image size and vocabulary) with the real widths and depths put back, saved with
`save_pretrained` and loaded by the job's own loader as a local directory. Random weights
change what is said, not how long it takes to say it, except the caption length: the
end-of-text token is kept from winning (its logit bias set very low) so every caption runs
to --max-new-tokens in every configuration.

For every (dtype, batch size), the same generated images (320x240 JPEGs, decoded as the job
decodes them):
  (a) bare loop: `teachers.load_captioner` / `load_tagger`, then both called on batches,
      captioner then tagger as the job chains them; images/s from the first batch to the last
      (the model load is reported apart);
  (b) the job: `python -m pipelines.pseudo_label --runner DirectRunner` on a manifest of the
      same images with the same flags; images/s over its run.json wall time, which includes
      loading both teachers on the worker: with few images the job's figure is mostly load.

--size tiny runs the replicas as they are (seconds: the smoke test); the table says which.
Benchmarks print measurements; they assert nothing about timings.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import memory
from benchmarks.throughput import write_images

REPO = memory.REPO
EOS_BIAS = -1e4
# The real repos' widths and depths (their config.json; the replicas keep everything else).
REAL = {
    "captioner": ("blip", "Salesforce/blip-image-captioning-large", {
        "vision_config": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
        "text_config": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                            encoder_hidden_size=1024),
    }),
    "tagger": ("siglip", "google/siglip-so400m-patch14-384", {
        "vision_config": dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304),
        "text_config": dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304,
                            projection_size=1152),
    }),
}


def build_teacher(kind: str, size: str, out: Path) -> dict:
    """The kind's replica at `size` in `out` (a directory the loader takes); returns its description."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

    from teachers import TeacherRef, resolve

    family, repo, widths = REAL[kind]
    shutil.copytree(resolve(TeacherRef(kind, f"tiny:{family}")), out)
    auto = AutoModelForImageTextToText if kind == "captioner" else AutoModel
    config = AutoConfig.from_pretrained(out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if size == "real":
            for part, values in widths.items():
                for key, value in values.items():
                    setattr(getattr(config, part), key, value)
            model = auto.from_config(config)
        else:
            model = auto.from_pretrained(out)
    if kind == "captioner":  # BLIP stops at [SEP] (its generate's eos) or the config's eos
        text = config.text_config
        with torch.no_grad():
            for token in {text.sep_token_id, text.eos_token_id} - {None}:
                model.text_decoder.cls.predictions.bias[token] = EOS_BIAS
    model.save_pretrained(out)
    return {"kind": kind, "family": family, "replicates": repo, "size": size,
            "parameters": sum(p.numel() for p in model.parameters()), "dir": str(out)}


# ---- (a) the bare loop ----------------------------------------------------------------

def bare_loop(captioner_dir: str, tagger_dir: str, images: list[Path], *, device: str, dtype: str,
              batch_size: int, caption_args: dict) -> dict:
    from pipelines.data.images import decode_image
    from teachers import CaptionParams, TagParams, load_captioner, load_tagger

    t0 = time.perf_counter()
    captioner = load_captioner(captioner_dir, CaptionParams(**caption_args), device=device, dtype=dtype)
    tagger = load_tagger(tagger_dir, TagParams(), device=device, dtype=dtype)
    loaded = time.perf_counter()
    pixels = [decode_image(p.read_bytes(), target_size=512).pixels for p in images]
    start = time.perf_counter()
    captioned = 0
    for i in range(0, len(pixels), batch_size):
        batch = pixels[i:i + batch_size]
        captioned += sum(1 for c in captioner(batch) if c)
        tagger(batch)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"load_s": round(loaded - t0, 2), "seconds": round(seconds, 3),
            "images_per_s": round(len(pixels) / seconds, 4), "captioned": captioned}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---- (b) the job ---------------------------------------------------------------------

def job(captioner_dir: str, tagger_dir: str, images: list[Path], work: Path, *, device: str, dtype: str,
        batch_size: int, caption_args: dict) -> dict:
    manifest = work / "images.csv"
    manifest.write_text("image_id,uri\n" + "".join(f"{p.stem},{p}\n" for p in images))
    out = work / "out"
    cmd = [sys.executable, "-m", "pipelines.pseudo_label", "--runner", "DirectRunner", "--input", str(manifest),
           "--output", str(out), "--overwrite", "--captioner", captioner_dir, "--tagger", tagger_dir,
           "--device", device, "--dtype", dtype, "--batch-size", str(batch_size),
           "--num-captions", str(caption_args["num_captions"]), "--num-beams", str(caption_args["num_beams"]),
           "--max-new-tokens", str(caption_args["max_new_tokens"])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the labeling job failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    run = json.loads((out / "run.json").read_text())
    wall = run["wall_seconds"]
    return {"wall_s": wall, "process_s": round(process_s, 2), "images_per_s": round(len(images) / wall, 4),
            "labeled": run["counts"]["labeled"]}


# ---- the table -------------------------------------------------------------------------

def print_table(s: dict) -> None:
    teachers = s["teachers"]
    print(f"Teacher throughput, {s['device']}, {s['images']} images of 320x240, torch threads {s['threads']}, "
          f"{s['caption']['num_captions']} captions / {s['caption']['num_beams']} beams / "
          f"{s['caption']['max_new_tokens']} new tokens (fixed length)")
    for t in teachers:
        print(f"  {t['kind']}: {t['family']} at {t['size']} size ({t['parameters'] / 1e6:.1f} M parameters, "
              f"replicating {t['replicates']})")
    print()
    print("| dtype | batch | bare: load s | bare: images/s | job: wall s | job: images/s | job / bare |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in s["rows"]:
        b, j = r["bare"], r["job"]
        print(f"| {r['dtype']} | {r['batch_size']} | {b['load_s']:.1f} | {b['images_per_s']:.3f} | "
              f"{j['wall_s']:.1f} | {j['images_per_s']:.3f} | {j['images_per_s'] / b['images_per_s']:.2f} |")
    print("\nbare images/s: teachers loaded, first batch to last; job images/s: over run.json wall time, "
          "which includes loading both teachers on the worker.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.teacher_throughput",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--dtypes", nargs="+", default=None, choices=("float32", "bfloat16", "float16"),
                    help="default: float32 on CPU; bfloat16, float16 and float32 on CUDA")
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--num-captions", type=int, default=3)
    ap.add_argument("--num-beams", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write every measurement here")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.error(f"--device {args.device}: this machine has no CUDA device")
    dtypes = args.dtypes or (["bfloat16", "float16", "float32"] if args.device.startswith("cuda") else ["float32"])
    caption = {"num_captions": args.num_captions, "num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="teacher-throughput-"))
    try:
        images = write_images(work / "images", args.images, 320, 240)
        teachers = [build_teacher(kind, args.size, work / kind) for kind in ("captioner", "tagger")]
        cap_dir, tag_dir = teachers[0]["dir"], teachers[1]["dir"]
        rows = []
        for dtype in dtypes:
            for b in args.batch_sizes:
                bare = bare_loop(cap_dir, tag_dir, images, device=args.device, dtype=dtype, batch_size=b,
                                 caption_args=caption)
                ran = job(cap_dir, tag_dir, images, work, device=args.device, dtype=dtype, batch_size=b,
                          caption_args=caption)
                rows.append({"dtype": dtype, "batch_size": b, "bare": bare, "job": ran})
                print(f"[teacher_throughput] {dtype} batch {b}: bare {bare['images_per_s']:.3f} images/s, "
                      f"job {ran['images_per_s']:.3f} images/s", file=sys.stderr, flush=True)
        summary = {"device": args.device, "images": args.images, "threads": torch.get_num_threads(),
                   "caption": caption, "teachers": [{k: v for k, v in t.items() if k != "dir"} for t in teachers],
                   "rows": rows}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
