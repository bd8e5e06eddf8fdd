"""Export a captioning student to ONNX: caption on a device without PyTorch (ONNX Runtime).

    python -m pipelines.export --checkpoint CKPT2 --output export/ [--int8]
    python -m pipelines.export --checkpoint CKPT2 --output gs://bucket/export/     # or s3://
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

--output may be a local directory or a storage URL (gs://, s3://, any fsspec URL). A URL's
export is written and checked in a local temporary directory (the ONNX exporter writes local
files), then every file is uploaded, export.json last, and the temporary directory removed:
the URL then holds what a local --output would. An --output that holds files, or is a file,
is refused before the export as for a local one; an upload that fails is one line, exit 1.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile

from pipelines.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandParser, UsageError, one_line, usage_error

PROG = "export"
PROBES = ((480, 640), (640, 427), (300, 300), (90, 500))  # (h, w): landscape, portrait, square, a strip


def parser() -> CommandParser:
    ap = CommandParser(prog="python -m pipelines.export", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a pipelines.finetune_caption output (CKPT2 or CKPT2/model)")
    ap.add_argument("--output", required=True,
                    help="the export directory: local, gs://, s3:// (a URL's export is made locally, then uploaded)")
    ap.add_argument("--int8", action="store_true", help="quantize the fusion's linear layers to int8 (dynamic)")
    ap.add_argument("--overwrite", action="store_true", help="write into an --output that already holds files")
    ap.add_argument("--no-check", action="store_true", help="skip the check against the checkpoint")
    return ap


def parse_args(argv):
    args = parser().parse_args(argv)
    if "://" in args.output:
        check_remote_output(args.output, args.overwrite)
        return args
    if os.path.isfile(args.output):
        raise UsageError(f"--output {args.output} is a file, not a directory")
    if os.path.isdir(args.output) and os.listdir(args.output) and not args.overwrite:
        raise UsageError(f"--output {args.output} already holds files; pass --overwrite to write over them")
    return args


def check_remote_output(url: str, overwrite: bool) -> None:
    """The local checks, on a storage URL: UsageError for a file, or for files there without --overwrite."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        root = root.rstrip("/")
        is_file = fs.isfile(root)
        holds = not is_file and fs.isdir(root) and bool(fs.ls(root, detail=False))
    except Exception as e:  # no such filesystem, no credentials, an unreachable store: one line
        raise UsageError(f"--output {url}: cannot look at it: {one_line(e)}") from e
    if is_file:
        raise UsageError(f"--output {url} is a file, not a directory")
    if holds and not overwrite:
        raise UsageError(f"--output {url} already holds files; pass --overwrite to write over them")


def upload(directory: str, url: str) -> None:
    """Every file under `directory` to the same names under `url`; export.json last, so that a partial
    upload is no export (the runtime recognises an export by its export.json)."""
    import fsspec

    from models.runtime import EXPORT_NAME
    from pipelines.data import storage

    fs, _ = fsspec.core.url_to_fs(url)
    names = sorted(os.path.relpath(os.path.join(d, f), directory) for d, _, files in os.walk(directory)
                   for f in files)
    for name in sorted(names, key=lambda n: n == EXPORT_NAME):
        _, path = fsspec.core.url_to_fs(storage.join(url, name.replace(os.sep, "/")))
        if not storage.is_remote(url):  # file://, memory://: folders are real there (a bucket's are not made)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(os.path.join(directory, name), path)


def upload_problem(error: BaseException) -> str:
    """Why an upload failed, in words: gcsfs and s3fs report a missing bucket as a bare FileNotFoundError(url)."""
    if isinstance(error, FileNotFoundError):
        return f"not found, does the bucket exist? ({one_line(error)})"
    if isinstance(error, PermissionError):
        return f"permission denied ({one_line(error)})"
    return one_line(error)


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
    except UsageError as e:
        return usage_error(PROG, e, file=err)
    if "://" not in args.output:
        return export_and_check(args, model, tokenizer, args.output, out, err)
    work = tempfile.mkdtemp(prefix="minivlm-export-")
    try:
        code = export_and_check(args, model, tokenizer, work, out, err)
        if code == EXIT_USAGE:  # refused before anything was written: nothing to upload
            return code
        try:
            upload(work, args.output)
        except Exception as e:  # a missing bucket, no permission, the store unreachable: one line
            print(f"export: error: cannot upload the export to {args.output}: {upload_problem(e)}; what arrived "
                  "there is no usable export: export again once it can be written", file=err)
            return EXIT_FAILED
        return code
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_and_check(args, model, tokenizer, directory: str, out, err) -> int:
    """Export into the local `directory`, print the sizes, check it and record the check in its
    export.json; messages name args.output (the directory, or the URL it is uploaded to)."""
    from models.export import NotExportable, export_captioner

    try:
        record = export_captioner(model, tokenizer, directory, int8=args.int8, source=args.checkpoint)
    except NotExportable as e:
        return usage_error(PROG, e, file=err)
    sizes = {name: os.path.getsize(os.path.join(directory, name)) / 1e6 for name in record["graphs"].values()}
    print(f"export: {args.output}: " + ", ".join(f"{n} {mb:.1f} MB" for n, mb in sizes.items())
          + f" ({record['precision']})", file=out)
    if args.no_check:
        return EXIT_OK
    try:
        result = check(model, tokenizer, directory)
    except Exception as e:  # the export was written but does not run: say so in one line
        print(f"export: error: the export in {args.output} does not run: {one_line(e)}", file=err)
        return EXIT_FAILED
    record["check"] = result
    with open(os.path.join(directory, "export.json"), "w") as f:
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
