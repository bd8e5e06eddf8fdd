"""Export a captioning student to ONNX: caption on a device without PyTorch (ONNX Runtime).

    python -m pipelines.export --checkpoint CKPT2 --output export/ [--int8]
    python -m pipelines.caption --checkpoint export/ photos/*.jpg      # ONNX Runtime, no torch import

Writes vision.onnx (the TEE: pixels to ranked regions, RPN, RoIAlign and NMS inside),
fusion.onnx (the fusion, cached: context once, then one call per decoding step), the
tokenizer and export.json (docs/deploy.md). Then it checks the export against the
checkpoint on probe images of several shapes: the regions each finds and their greedy
captions, printed and kept in export.json under "check". --int8 quantizes the fusion's
linear layers (dynamic int8); its captions may differ from the checkpoint's, and the check
says how many do. A checkpoint that is not a captioner, an op that cannot export, or an
--output already holding files (without --overwrite): one line, exit 2. An fp32 export
whose regions differ from the checkpoint's (count, classes and order, scores to 1e-4), or an
export that does not run: exit 1.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from pipelines.cli import EXIT_FAILED, EXIT_OK, CommandParser, UsageError, one_line, usage_error

PROG = "export"
PROBES = ((480, 640), (640, 427), (300, 300), (90, 500))  # (h, w): landscape, portrait, square, a strip


def parser() -> CommandParser:
    ap = CommandParser(prog="python -m pipelines.export", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a pipelines.finetune_caption output (CKPT2 or CKPT2/model)")
    ap.add_argument("--output", required=True, help="the export directory (local; copy it anywhere after)")
    ap.add_argument("--int8", action="store_true", help="quantize the fusion's linear layers to int8 (dynamic)")
    ap.add_argument("--overwrite", action="store_true", help="write into an --output that already holds files")
    ap.add_argument("--no-check", action="store_true", help="skip the check against the checkpoint")
    return ap


def parse_args(argv):
    args = parser().parse_args(argv)
    if "://" in args.output:
        raise UsageError(f"--output {args.output}: export to a local directory, then copy it (gsutil, aws s3 cp)")
    if os.path.isfile(args.output):
        raise UsageError(f"--output {args.output} is a file, not a directory")
    if os.path.isdir(args.output) and os.listdir(args.output) and not args.overwrite:
        raise UsageError(f"--output {args.output} already holds files; pass --overwrite to write over them")
    return args


def load(args):
    """The checkpoint, loaded for inference, or UsageError saying why it cannot export."""
    from pipelines.infer.captions import checkpoint_problem

    problem = checkpoint_problem("--checkpoint", args.checkpoint)
    if problem:
        raise UsageError(problem)
    from models.captioning import load_for_inference  # torch: only once the flags and kind are right

    try:
        model, tokenizer = load_for_inference(args.checkpoint, device="cpu")
    except Exception as e:  # one line for a checkpoint that cannot load, whatever the cause
        raise UsageError(one_line(e)) from e
    return model, tokenizer


def check(model, tokenizer, directory: str) -> dict:
    """The export against the model on PROBES (seeded noise): regions kept, their largest feature
    difference, and greedy captions (beam 1, 20 words) equal or not."""
    import numpy as np

    from models.captioning import StudentCaptioner
    from models.runtime import load_onnx_captioner

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in PROBES]
    exported = load_onnx_captioner(directory)
    eager = StudentCaptioner(model, tokenizer, "export check")
    ours, theirs = model.tee.extract(images), exported.regions(images)
    # the same regions: as many, the same classes in the same order, scores to 1e-4 (regions a random
    # TEE scores alike to 1e-8 may swap places: same names and scores, other features; docs/deploy.md)
    same = [len(a.features) == len(b["features"]) and a.names == b["names"]
            and bool(np.allclose(a.scores, b["scores"], atol=1e-4)) for a, b in zip(ours, theirs)]
    diff = max((float(np.abs(a.features - b["features"]).max()) for a, b, s in zip(ours, theirs, same)
                if s and len(a.features)), default=0.0)
    length = min(20, model.config.max_caption_tokens)
    a = eager(images, greedy=True, max_length=length)
    b = exported(images, greedy=True, max_length=length)
    return {"images": len(images), "regions_equal": sum(same), "max_feature_diff": diff,
            "captions_equal": sum(x.text == y.text for x, y in zip(a, b)), "decoding": f"greedy, {length} words"}


def run(argv: list[str] | None = None, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        args = parse_args(argv)
        model, tokenizer = load(args)
        from models.export import NotExportable, export_captioner

        try:
            record = export_captioner(model, tokenizer, args.output, int8=args.int8, source=args.checkpoint)
        except NotExportable as e:
            raise UsageError(str(e)) from e
    except UsageError as e:
        return usage_error(PROG, e, file=err)
    sizes = {name: os.path.getsize(os.path.join(args.output, name)) / 1e6 for name in record["graphs"].values()}
    print(f"export: {args.output}: " + ", ".join(f"{n} {mb:.1f} MB" for n, mb in sizes.items())
          + f" ({record['precision']})", file=out)
    if args.no_check:
        return EXIT_OK
    try:
        result = check(model, tokenizer, args.output)
    except Exception as e:  # the export was written but does not run: say so in one line
        print(f"export: error: the export in {args.output} does not run: {one_line(e)}", file=err)
        return EXIT_FAILED
    record["check"] = result
    with open(os.path.join(args.output, "export.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"export: check on {result['images']} probe images: regions equal {result['regions_equal']}/"
          f"{result['images']} (largest feature difference {result['max_feature_diff']:.2e}), {result['decoding']} "
          f"captions equal {result['captions_equal']}/{result['images']}", file=out)
    if result["regions_equal"] < result["images"]:
        print(f"export: error: the exported TEE keeps other regions than the checkpoint's on "
              f"{result['images'] - result['regions_equal']} probe image(s)", file=err)
        return EXIT_FAILED
    return EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
