"""Is the student's data loader the bottleneck? Streaming Parquet vs in-memory tensors, same model and batch.

    python -m benchmarks.student_input [--rows 600] [--steps 20] [--repeats 2] [--num-workers 1] [--json PATH]

Writes a corpus of random rows at the product's sizes (50 regions x 512-d float16
features, captions, tags) as Parquet shards, then times training steps (forward,
backward, AdamW) of the student (bundled MiniLM-L6 fusion, 6 x 384, with a tee-d0's
feature size) fed (a) by the real streaming loader (CorpusStream + DataLoader workers +
tokenising/masking collate) and (b) by batches built once beforehand and kept in
memory. Interleaved a b a b ..., warm-up excluded; reports steps/s of each and the
ratio (a)/(b) (target >= 0.95). Random weights and data: timing does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch


def write_corpus(root: str, rows: int, shards: int, tee) -> list[str]:
    import pyarrow.parquet as pq

    from schemas import CORPUS

    rng = np.random.default_rng(0)
    words = "a dog cat man woman red blue green on in near with the grass road sky water boat car tree".split()
    d, n = tee.config.feature_dim, tee.config.num_regions
    os.makedirs(os.path.join(root, "shards"), exist_ok=True)
    files = []
    for s in range(shards):
        batch = []
        for i in range(s, rows, shards):
            caps = [" ".join(rng.choice(words, 12)) for _ in range(3)]
            batch.append({
                "image_id": f"img{i:07d}", "sha256": f"{i:064x}", "width": 640, "height": 480, "split": "train",
                "captions": [{"text": c, "score": -1.0, "similarity": None} for c in caps],
                "tags": [{"label": f"/t/{w}", "name": w, "score": 0.5} for w in rng.choice(words, 8)],
                "num_regions": n, "boxes": rng.random((n, 4)).astype(np.float32).tolist(),
                "region_scores": [0.5] * n, "region_labels": ["/c/x"] * n, "region_names": ["x"] * n,
                "features": rng.standard_normal(n * d).astype(np.float16), "feature_dim": d,
                "extractor": tee.extractor_id(), "captioner": "random", "tagger": "random",
                "schema_version": CORPUS.version})
        path = os.path.join(root, "shards", f"train-{s:05d}-of-{shards:05d}.parquet")
        pq.write_table(CORPUS.to_table(batch), path, compression="zstd")
        files.append(path)
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.student_input", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch.utils.data import DataLoader

    from models.minivlm import build_student, bundled_bert_dir
    from models.tee import build_tee
    from pipelines.train.pretrain_data import CorpusStream, ObjectiveConfig, PretrainCollate

    tee = build_tee("tee-d0").requires_grad_(False)
    model, tok = build_student(bundled_bert_dir(), tee)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    collate = PretrainCollate(tok, model.config, ObjectiveConfig())
    with tempfile.TemporaryDirectory() as tmp:
        files = write_corpus(tmp, args.rows, args.shards, tee)
        size_mb = sum(os.path.getsize(f) for f in files) / 1e6

        def streaming():
            stream = CorpusStream(files, feature_dim=model.config.region_feature_dim,
                                  max_regions=model.config.max_regions, seed=0, batch_size=args.batch_size)
            return iter(DataLoader(stream, batch_size=args.batch_size, collate_fn=collate,
                                   num_workers=args.num_workers))

        first = streaming()
        cached = [next(first) for _ in range(4)]  # the in-memory batches: built once, reused
        del first

        def step(batch):
            out = model(batch)
            loss = out["mlm_loss"] + out["contrastive_loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def timed(source) -> float:
            for _ in range(2):  # warm-up: worker start, first shard open, allocator
                step(next(source))
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(next(source))
            return args.steps / (time.perf_counter() - t0)

        def in_memory():
            i = 0
            while True:
                yield cached[i % len(cached)]
                i += 1

        rates = {"streaming": [], "in_memory": []}
        for _ in range(args.repeats):
            rates["in_memory"].append(timed(in_memory()))
            rates["streaming"].append(timed(streaming()))
    a, b = statistics.median(rates["streaming"]), statistics.median(rates["in_memory"])
    result = {"streaming_steps_per_s": round(a, 4), "in_memory_steps_per_s": round(b, 4), "ratio": round(a / b, 4),
              "batch_size": args.batch_size, "num_workers": args.num_workers, "threads": torch.get_num_threads(),
              "rows": args.rows, "shards": args.shards, "corpus_mb": round(size_mb, 1),
              "fusion": f"{model.config.num_layers} x {model.config.hidden_size}",
              "regions": model.config.max_regions, "feature_dim": model.config.region_feature_dim,
              "all_rates": rates}
    print("| loader | steps/s | samples/s |")
    print("|---|---:|---:|")
    print(f"| in-memory tensors | {b:.3f} | {b * args.batch_size:.1f} |")
    print(f"| streaming Parquet ({args.num_workers} worker(s)) | {a:.3f} | {a * args.batch_size:.1f} |")
    print(f"\nratio streaming / in-memory: {a / b:.3f} (target >= 0.95); student {result['fusion']} fusion, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, corpus {size_mb:.0f} MB in {args.shards} shards")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
