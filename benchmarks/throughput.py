"""The labeling job's overhead: the Beam job against a bare loop with the same teacher.

    python -m benchmarks.throughput [--images 96] [--batch-size 8] [--threads N] [--max-new-tokens 20]
        [--captioner-size mid|tiny] [--repeats 2] [--off-images 2000]
        [--memory-sizes 1000 8000] [--memory-repeats 2] [--json PATH]

Same teacher (a BLIP captioner of a mid-sized config with random weights, saved with
`save_pretrained` and the real BERT tokenizer, loaded by the job's own loader as a
local directory), same images (generated JPEGs), same batch size, same torch thread
count, each side in a fresh interpreter:

  (a) bare loop: read the file, `pipelines.data.images.decode_image` at the job's decode
      size, `teachers.load_captioner(...)` called on batches of --batch-size images;
  (b) the job: `python -m pipelines.pseudo_label --runner DirectRunner --captioner DIR
      --tagger none ...` writing Parquet parts.

Generation length is fixed: greedy (--num-beams 1 --num-captions 1) and the end-of-text
token's logit bias is set to -1e4 in the saved weights, so every caption is exactly
--max-new-tokens tokens long in both (checked when the model is built).

Throughput is steady state: images / (time from the teacher loaded to the last row
done), the loop's "done" being the end of its last batch, the job's the last committed
Parquet part (mtime). Both include the first (warm-up) teacher call. The fixed costs
(interpreter start, imports, pipeline construction, model load, run.json and counts at
the end) are excluded from the ratio and reported apart, as process wall times.
The job is timed without touching its code: its child interpreter wraps
`load_captioner` and `Captioner.__call__` to record when the model was loaded and
each batch's size and duration. Loop and job runs are interleaved, --repeats times;
the best of each side counts (the machine may be shared).

Teachers off (decode + write: the ceiling the pipeline sets) is the labeling job with
no teachers (`benchmarks.memory.run_decode_write`) over --off-images rows listing the
same images under distinct ids: images / run.json wall_seconds. Memory: the same
teachers-off job over --memory-sizes rows of small (64x48) JPEGs, peak RSS of each
child (VmHWM, `memory.peak_rss_kb`), run --memory-repeats times per size: the growth
in bytes per image between the sizes' means, against the spread of repeats (noise).

Benchmarks print measurements; they assert nothing about timings.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import memory

REPO = memory.REPO
RATIO_TARGET = 0.90
EOS_BIAS = -1e4  # fixed generation length: the end-of-text token is never the argmax

# Captioner configs: BLIP vision tower + BERT-style text decoder (random weights).
SIZES = {
    "mid": dict(image_size=224, patch_size=16, hidden=384, layers=6, heads=6, intermediate=1536),
    "tiny": dict(image_size=32, patch_size=8, hidden=32, layers=2, heads=2, intermediate=64),
}


# ---- inputs -------------------------------------------------------------------------

def build_captioner(out_dir: str, size: str = "mid", max_new_tokens: int = 20) -> dict:
    """Save a random-weight BLIP captioner of `size` to out_dir; returns its description."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor
    from transformers.utils import logging as hf_logging

    from teachers.replicas.common import bert_tokenizer

    hf_logging.disable_progress_bar()

    c = SIZES[size]
    tok = bert_tokenizer(bos_token="[DEC]")
    tower = dict(hidden_size=c["hidden"], intermediate_size=c["intermediate"], num_hidden_layers=c["layers"],
                 num_attention_heads=c["heads"])
    # As the tiny BLIP (teachers/replicas/blip.py): decodes from [DEC], stops at [SEP].
    text = dict(tower, vocab_size=len(tok), max_position_embeddings=max(64, 2 * max_new_tokens),
                bos_token_id=tok.bos_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                sep_token_id=tok.sep_token_id)
    vision = dict(tower, image_size=c["image_size"], patch_size=c["patch_size"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision,
                                                        projection_dim=c["hidden"])).eval()
        with torch.no_grad():
            model.text_decoder.cls.predictions.bias[tok.sep_token_id] = EOS_BIAS
    square = {"height": c["image_size"], "width": c["image_size"]}
    processor = BlipProcessor(image_processor=BlipImageProcessor(size=square), tokenizer=tok)
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    # The length really is fixed: one greedy generation from the saved weights.
    pixels = torch.rand(2, 3, c["image_size"], c["image_size"])
    with torch.inference_mode():
        seq = model.generate(pixel_values=pixels, num_beams=1, max_new_tokens=max_new_tokens, do_sample=False)
    generated = seq.shape[1] - 1  # minus the [DEC] prompt
    if generated != max_new_tokens or (seq == tok.sep_token_id).any():
        raise RuntimeError(f"generation length is not fixed: {generated} tokens, asked {max_new_tokens}")
    return {"family": "blip", "size": size, **c, "decoder_layers": c["layers"], "vocab": len(tok),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "generated_tokens": generated}


def write_images(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """n distinct photo-like JPEGs (smooth random colour fields + gradient + grain)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    ramp = ((x / max(width - 1, 1) + y / max(height - 1, 1)) * 60)[..., None]
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                        Image.Resampling.BICUBIC)
        arr = np.asarray(coarse, dtype=np.float32) + ramp + rng.normal(0, 8, (height, width, 3))
        path = folder / f"im{i:05d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def thread_env(threads: int) -> dict:
    return {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


# ---- the two sides, each in a fresh interpreter --------------------------------------

CHILD = "import sys; from benchmarks.throughput import child_main; sys.exit(child_main(sys.argv[1:]))"


def _spawn(kind: str, report: Path, threads: int, rest: list[str]) -> dict:
    """Run child_main(kind ...) in a fresh interpreter; returns its report + process wall."""
    started = time.time()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(report), str(threads), *rest], cwd=REPO,
                          capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **thread_env(threads)})
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(report.read_text())
    out.update(process_wall_s=wall, process_started_at=started)
    return out


def child_main(argv: list[str]) -> int:
    """In a fresh interpreter: `loop REPORT THREADS MODEL_DIR IMAGE_DIR BATCH DECODE_SIZE MAX_NEW_TOKENS`
    or `job REPORT THREADS -- JOB ARGS...`."""
    kind, report, threads, rest = argv[0], Path(argv[1]), int(argv[2]), argv[3:]
    import torch

    torch.set_num_threads(threads)
    if kind == "loop":
        out, rc = _loop(*rest), 0
    else:
        out, rc = _job(rest[1:] if rest[:1] == ["--"] else rest)
    out["peak_rss_kb"] = memory.peak_rss_kb()
    report.write_text(json.dumps(out))
    return rc


def _loop(model_dir: str, image_dir: str, batch_size: str, decode_size: str, max_new_tokens: str) -> dict:
    import torch

    from pipelines.data.images import decode_image
    from teachers import CaptionParams, load_captioner

    params = CaptionParams(num_captions=1, num_beams=1, max_new_tokens=int(max_new_tokens))
    captioner = load_captioner(model_dir, params, device="cpu")
    loaded = time.time()
    files, b = sorted(Path(image_dir).glob("*.jpg")), int(batch_size)
    calls, captioned = [], 0
    for i in range(0, len(files), b):
        pixels = []
        for f in files[i:i + b]:
            pixels.append(decode_image(f.read_bytes(), target_size=int(decode_size)).pixels)
        t0 = time.time()
        results = captioner(pixels)
        calls.append([len(pixels), t0, time.time(), torch.get_num_threads()])
        captioned += sum(1 for r in results if r)
    return {"images": len(files), "captioned": captioned, "loaded_at": loaded, "done_at": calls[-1][2],
            "calls": calls}


def _job(job_args: list[str]) -> tuple[dict, int]:
    """The real CLI, with the captioner's load and calls timed from the outside."""
    import torch

    import teachers
    from teachers import captioner as captioner_module

    calls, loaded = [], []
    real_load, real_call = teachers.load_captioner, captioner_module.Captioner.__call__

    def load_captioner(*a, **kw):
        model = real_load(*a, **kw)
        loaded.append(time.time())
        return model

    def call(self, images):
        t0 = time.time()
        out = real_call(self, images)
        calls.append([len(images), t0, time.time(), torch.get_num_threads()])
        return out

    teachers.load_captioner = load_captioner  # the handler imports it from `teachers` when it loads
    captioner_module.Captioner.__call__ = call
    from pipelines.pseudo_label import run

    rc = run(job_args)
    return {"loaded_at": loaded[0] if loaded else None, "calls": calls}, rc


def _part_mtimes(output: Path) -> list[float]:
    return [p.stat().st_mtime for table in ("labels", "failures") for p in (output / table).glob("*.parquet")]


def run_loop(work: Path, model_dir: str, image_dir: Path, args, tag: str) -> dict:
    r = _spawn("loop", work / f"loop-{tag}.json", args.threads,
               [model_dir, str(image_dir), str(args.batch_size), str(args.decode_size), str(args.max_new_tokens)])
    steady = r["done_at"] - r["loaded_at"]
    return {"images_per_s": r["images"] / steady, "steady_s": steady, "process_wall_s": r["process_wall_s"],
            "startup_s": r["loaded_at"] - r["process_started_at"], "captioned": r["captioned"],
            **_call_stats(r["calls"], steady)}


def run_job(work: Path, model_dir: str, image_dir: Path, args, tag: str) -> dict:
    output = work / f"job-{tag}"
    job_args = ["--runner", "DirectRunner", "--input", str(image_dir), "--output", str(output),
                "--captioner", model_dir, "--tagger", "none", "--num-beams", "1", "--num-captions", "1",
                "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
                "--decode-size", str(args.decode_size), "--device", "cpu"]
    r = _spawn("job", work / f"job-{tag}.json", args.threads, ["--", *job_args])
    record = json.loads((output / "run.json").read_text())
    counts = record["counts"]
    if counts["labeled"] != args.images or counts["failed"]:
        raise RuntimeError(f"the job labeled {counts['labeled']} of {args.images} images: {counts}")
    done = max(_part_mtimes(output))
    steady = done - r["loaded_at"]
    return {"images_per_s": args.images / steady, "steady_s": steady, "process_wall_s": r["process_wall_s"],
            "wall_seconds": record["wall_seconds"], "startup_s": r["loaded_at"] - r["process_started_at"],
            "end_s": r["process_wall_s"] - (done - r["process_started_at"]),
            **_call_stats(r["calls"], steady)}


def _call_stats(calls: list, steady: float) -> dict:
    sizes = [c[0] for c in calls]
    teacher = sum(c[2] - c[1] for c in calls)
    return {"teacher_calls": len(calls), "batch_sizes": sizes, "call_s": [round(c[2] - c[1], 3) for c in calls],
            "teacher_s": teacher,
            "teacher_share": teacher / steady if steady > 0 else float("nan"),
            "torch_threads_seen": sorted({c[3] for c in calls})}


# ---- teachers off: throughput and memory ---------------------------------------------

def run_decode_write(work: Path, photos: list[Path], n: int, args, tag: str) -> dict:
    table = work / f"table-{tag}.csv"
    memory.write_table(table, n, photos)
    output = work / f"off-{tag}"
    r = memory.run_child(["--runner", "DirectRunner", "--input", str(table), "--output", str(output),
                          "--batch-size", str(args.batch_size), "--decode-size", str(args.decode_size)],
                         teachers_off=True, env=thread_env(args.threads))
    counts = r["run"]["counts"]
    if counts["labeled"] != n or counts["failed"]:
        raise RuntimeError(f"the teachers-off job labeled {counts['labeled']} of {n} images: {counts}")
    wall = r["run"]["wall_seconds"]
    return {"images": n, "images_per_s": n / wall, "wall_seconds": wall, "process_wall_s": r["process_wall_s"],
            "peak_rss_kb": r["peak_rss_kb"]}


# ---- report ---------------------------------------------------------------------------

def _best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["images_per_s"])


def memory_stats(mem: list[dict]) -> dict:
    """Runs at two sizes (repeated) -> mean peak RSS per size, growth and noise in bytes per image."""
    sizes = sorted({m["images"] for m in mem})
    small, large = sizes[0], sizes[-1]
    rss = {n: [m["peak_rss_kb"] * 1024 for m in mem if m["images"] == n] for n in sizes}
    mean = {n: sum(v) / len(v) for n, v in rss.items()}
    wall = {n: min(m["wall_seconds"] for m in mem if m["images"] == n) for n in sizes}
    span = max(large - small, 1)
    # Noise: how far apart repeats of the same size land (at least one 4 KiB page).
    spread = max([max(v) - min(v) for v in rss.values()] + [4096])
    return {"small": small, "large": large, "small_bytes": mean[small], "large_bytes": mean[large],
            "growth_bytes_per_image": (mean[large] - mean[small]) / span,
            "noise_bytes_per_image": spread / span,
            # Per-image rate of the teachers-off job without its fixed costs (small images).
            "marginal_images_per_s": (large - small) / (wall[large] - wall[small])
            if wall[large] > wall[small] else float("nan")}


def summarize(args, captioner: dict, loops: list[dict], jobs: list[dict], off: dict, mem: list[dict]) -> dict:
    loop, job = _best(loops), _best(jobs)
    m = memory_stats(mem)
    return {
        "bare_images_per_s": loop["images_per_s"],
        "job_images_per_s": job["images_per_s"],
        "ratio": job["images_per_s"] / loop["images_per_s"],
        "ratio_end_to_end": loop["process_wall_s"] / job["process_wall_s"],
        "job_teachers_off_images_per_s": off["images_per_s"],
        "job_teachers_off_marginal_images_per_s": m["marginal_images_per_s"],
        # Named for the default sizes (settings.memory_sizes has the ones used); mean over repeats.
        "peak_rss_1000_mb": m["small_bytes"] / 2**20,
        "peak_rss_8000_mb": m["large_bytes"] / 2**20,
        "growth_bytes_per_image": m["growth_bytes_per_image"],
        "noise_bytes_per_image": m["noise_bytes_per_image"],
        "ratio_target": RATIO_TARGET,
        "settings": {"images": args.images, "image_size": "320x240", "batch_size": args.batch_size,
                     "threads": args.threads, "max_new_tokens": args.max_new_tokens,
                     "decode_size": args.decode_size, "repeats": args.repeats, "off_images": args.off_images,
                     "memory_sizes": [m["small"], m["large"]], "memory_repeats": args.memory_repeats,
                     "memory_image_size": "64x48",
                     "captioner": captioner, "runner": "DirectRunner", "cpu_count": os.cpu_count()},
        "loop_runs": loops, "job_runs": jobs, "teachers_off": off, "memory": mem,
    }


def print_table(s: dict) -> None:
    st, cap = s["settings"], s["settings"]["captioner"]
    small, large = st["memory_sizes"]
    loop, job = _best(s["loop_runs"]), _best(s["job_runs"])

    def runs(key):
        return ", ".join(f"{r['images_per_s']:.2f}" for r in s[key])

    def yes(ok):
        return "yes" if ok else "no"

    rows = [
        ("(a) bare loop: decode + teacher, images/s", f"{s['bare_images_per_s']:.2f} (runs {runs('loop_runs')})",
         "", ""),
        ("(b) Beam job, DirectRunner, Parquet, images/s", f"{s['job_images_per_s']:.2f} (runs {runs('job_runs')})",
         "", ""),
        ("ratio (b)/(a), steady state", f"{s['ratio']:.3f}", f">= {RATIO_TARGET:.2f}", yes(s["ratio"] >= RATIO_TARGET)),
        ("ratio (b)/(a), whole processes (startup included)",
         f"{s['ratio_end_to_end']:.3f} (loop {loop['process_wall_s']:.1f} s, job {job['process_wall_s']:.1f} s, "
         f"job run.json {job['wall_seconds']:.1f} s)", "reported", ""),
    ]
    rows += [
        ("job, teachers off (decode + write), images/s",
         f"{s['job_teachers_off_images_per_s']:.0f} ({s['teachers_off']['images']} x {st['image_size']}, "
         f"run.json wall)", "reported", ""),
        ("job, teachers off, marginal images/s",
         f"{s['job_teachers_off_marginal_images_per_s']:.0f} ({small} -> {large} x {st['memory_image_size']})",
         "reported", ""),
        (f"peak RSS, teachers off, {small} images", f"{s['peak_rss_1000_mb']:.1f} MB", "", ""),
        (f"peak RSS, teachers off, {large} images", f"{s['peak_rss_8000_mb']:.1f} MB", "", ""),
        ("peak RSS growth per image", f"{s['growth_bytes_per_image']:.0f} B",
         f"within noise (<= {s['noise_bytes_per_image']:.0f} B)",
         yes(s["growth_bytes_per_image"] <= s["noise_bytes_per_image"])),
    ]
    print(f"BLIP captioner '{cap['size']}' ({cap['params_m']} M parameters, random weights, {cap['image_size']} px), "
          f"greedy, {st['max_new_tokens']} tokens per caption; {st['images']} JPEGs {st['image_size']}, batch "
          f"{st['batch_size']}, {st['threads']} torch threads, DirectRunner; best of {st['repeats']} runs.\n")
    print("| measurement | value | target | holds |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nSteady state = images / (teacher loaded -> last batch done (a), last Parquet part committed (b)); "
          f"both include the first (warm-up) teacher call. Excluded fixed costs: loop {loop['startup_s']:.1f} s "
          f"before its model was loaded; job {job['startup_s']:.1f} s before + {job['end_s']:.1f} s after "
          f"(interpreter, imports, pipeline, input + dedupe grouping, model load; run.json, counts, exit). "
          f"Teacher share of the steady window: loop {loop['teacher_share']:.0%}, job {job['teacher_share']:.0%}. "
          f"Teacher batch sizes: loop {loop['batch_sizes']}, job {job['batch_sizes']}.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96, help="320x240 JPEGs labeled by the loop and the job")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides")
    ap.add_argument("--max-new-tokens", type=int, default=20, help="fixed caption length (tokens)")
    ap.add_argument("--decode-size", type=int, default=512, help="the job's --decode-size (its default)")
    ap.add_argument("--captioner-size", choices=sorted(SIZES), default="mid")
    ap.add_argument("--repeats", type=int, default=2, help="loop/job pairs, alternated; the best of each counts")
    ap.add_argument("--off-images", type=int, default=2000, help="rows of the teachers-off throughput run")
    ap.add_argument("--memory-sizes", type=int, nargs=2, default=[1000, 8000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--memory-repeats", type=int, default=2, help="runs per memory size (their spread = noise)")
    ap.add_argument("--json", default=None, help="also write every measurement here")
    args = ap.parse_args(argv)
    if min(args.images, args.batch_size, args.threads, args.repeats, args.off_images, args.memory_repeats,
           *args.memory_sizes) < 1:
        ap.error("sizes, --threads and --repeats must be positive")

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        work = Path(tmp)
        model_dir = str(work / "captioner")
        captioner = build_captioner(model_dir, args.captioner_size, args.max_new_tokens)
        image_dir = work / "images"
        photos = write_images(image_dir, args.images, 320, 240)
        loops, jobs = [], []
        for i in range(args.repeats):  # interleaved: load drifts alike
            loops.append(run_loop(work, model_dir, image_dir, args, str(i)))
            jobs.append(run_job(work, model_dir, image_dir, args, str(i)))
        off = run_decode_write(work, photos, args.off_images, args, "off")
        small_photos = write_images(work / "small", 64, 64, 48, seed=1)
        mem = [run_decode_write(work, small_photos, n, args, f"mem-{n}-{i}")
               for i in range(args.memory_repeats) for n in args.memory_sizes]
    s = summarize(args, captioner, loops, jobs, off, mem)
    s["benchmark_wall_s"] = time.monotonic() - t0
    print_table(s)
    print(f"\nBenchmark wall time {s['benchmark_wall_s'] / 60:.1f} min.")
    if args.json:
        Path(args.json).write_text(json.dumps(_finite(s), indent=2, allow_nan=False) + "\n")
    return 0


def _finite(v):
    """JSON-safe: NaN/inf -> null, recursively."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


if __name__ == "__main__":
    sys.exit(main())
