"""The Beam jobs' command lines: every flag of pseudo_label, extract_features and build_corpus,
and which of them a rerun (--resume, --retry-failures) may change.

Kept light on purpose: `--help` builds these parsers and exits, so this module imports no
apache_beam, torch or transformers (nor pyarrow, through schemas or teachers). The few
choices and defaults that live in heavier modules are repeated here as literals;
tests/test_flags_beam.py checks that they still agree with their sources.

Each parser is a `CommandParser`: no prefix abbreviations, defaults in --help, an unknown
flag is a UsageError naming the closest known one; `parse_with_beam` passes on only flags
some Beam PipelineOptions class defines.
"""
from __future__ import annotations

import argparse
import os

from pipelines.cli import REPO_ROOT, SAMPLE_MANIFEST, CommandParser

# ---- literals from heavier modules (checked against them by tests/test_flags_beam.py) ----

INPUT_FORMATS = ("auto", "openimages", "table", "files")  # pipelines.data.sources.KINDS
DEFAULT_PATH_TEMPLATE = "{ImageID}.jpg"  # pipelines.data.sources.DEFAULT_TEMPLATE
DEFAULT_MAX_PIXELS = 89_478_485  # pipelines.data.images.DEFAULT_MAX_PIXELS (PIL's bomb limit)
CODECS = ("zstd", "snappy", "gzip", "brotli", "none")  # pipelines.beam.sinks.CODECS
RETRY_MODES = ("transient", "all")  # pipelines.beam.retry.MODES
DEDUPE_MODES = ("auto", "shuffle", "disk")  # pipelines.beam.imagejob.DEDUPE_MODES
DTYPES = ("auto", "float32", "bfloat16", "float16")  # teachers.common.DTYPES
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"  # teachers.DEFAULT_CAPTIONER
DEFAULT_TAGGER = "google/siglip-so400m-patch14-384"  # teachers.DEFAULT_TAGGER
DEFAULT_VOCAB = os.path.join(REPO_ROOT, "schemas", "vocabularies", "default_tags.csv")  # teachers.DEFAULT_VOCAB

# ---- what a rerun may change --------------------------------------------------------

# Flags a rerun takes from its own command line, never from the run it continues.
PER_INVOCATION = ("output", "overwrite", "resume", "retry_failures")
# Flags that change how the work runs, not what a row says: --resume and --retry-failures
# may give them anew.
HOW_TO_RUN = ("device", "batch_size", "threads", "quiet", "large_model", "model_copies", "read_retries", "cache_dir",
              "rows_per_part", "compression", "dedupe", "trust_remote_code")
# Flags that say which images to go through: a resumed run may go further into, or over
# more of, its input (its rows stay). A retry re-reads the run's own input instead.
WHICH_IMAGES = ("input", "input_format", "image_root", "image_path_template", "limit")
# Models and files: --resume compares what they resolve to (a hub id pinned to a commit,
# `tiny` and `tiny:blip` alike, the bundled vocabulary wherever this checkout is, its
# content), not how they are spelled: each job's `models_of` says what identifies them.
MODEL_REFERENCES = ("captioner", "tagger", "tee", "tag_vocab")
RESUME_MAY_CHANGE = (*PER_INVOCATION, *HOW_TO_RUN, *WHICH_IMAGES, *MODEL_REFERENCES)

BEAM_EPILOG = ("Every other flag must be an Apache Beam pipeline option (checked against Beam's own "
               "options), e.g. --runner DataflowRunner --project P --region R --temp_location gs://B/tmp "
               "--setup_file ./setup.py.")


# ---- the flags every image job shares ----------------------------------------------

def add_io_args(ap: argparse.ArgumentParser, verb: str = "label") -> None:
    """--input ... --compression: where images come from and where rows go."""
    io_ = ap.add_argument_group("input and output")
    io_.add_argument("--input", default=SAMPLE_MANIFEST,
                     help="Open Images image CSV, a CSV/Parquet table with image_id,uri, or a glob/directory "
                          "of images (local, gs://, s3://, http(s)://); default: the bundled sample")
    io_.add_argument("--input-format", default="auto", choices=INPUT_FORMATS, help="override the detection")
    io_.add_argument("--image-root", default=None,
                     help="where Open Images CSV images live (unset: the 'images' folder beside the CSV)")
    io_.add_argument("--image-path-template", default=DEFAULT_PATH_TEMPLATE,
                     help="image path under --image-root from manifest columns; public bucket: {Subset}/{ImageID}.jpg")
    io_.add_argument("--limit", type=int, default=None, help=f"{verb} at most N input rows (unset: all)")
    io_.add_argument("--output", required=True, help="output directory (local, gs://, s3://)")
    io_.add_argument("--overwrite", action="store_true", help="replace a previous run in --output")
    io_.add_argument("--resume", action="store_true",
                     help="continue the run in --output with the same settings: images it committed are skipped; "
                          "an empty --output starts a new run")
    io_.add_argument("--retry-failures", nargs="?", const="transient", default=None, choices=RETRY_MODES,
                     help="reprocess the run in --output's failures with its own settings: transient ones "
                          "(server errors, timeouts, model errors; the default) or all; with --resume it also "
                          "finishes an unfinished run")
    io_.add_argument("--dedupe", default="auto", choices=DEDUPE_MODES,
                     help="how the first row per image is picked: on disk (one machine: memory stays flat), by "
                          "the runner's shuffle (Dataflow), or auto (disk on the DirectRunner, shuffle elsewhere)")
    io_.add_argument("--rows-per-part", type=int, default=1000,
                     help="rows per committed Parquet part file (also the most work a killed job loses)")
    io_.add_argument("--compression", default="zstd", choices=CODECS, help="Parquet codec")


def add_inference_args(ap: argparse.ArgumentParser, models: str = "teachers") -> None:
    """--device ... --read-retries: how models run and how images are read and decoded."""
    ru = ap.add_argument_group("inference")
    ru.add_argument("--device", default="auto",
                    help="auto | cpu | cuda | cuda:N; with a runner on this machine, cuda must exist here")
    ru.add_argument("--batch-size", type=int, default=8, help="images per forward pass (RunInference max_batch_size)")
    ru.add_argument("--threads", type=int, default=None,
                    help="CPU threads per model caller (unset: an even share of the machine's cores where "
                         "several workers share it, --direct_num_workers here, 1 per SDK process on Dataflow; "
                         "PyTorch's default for a lone worker)")
    ru.add_argument("--large-model", action="store_true",
                    help=f"share one copy of the {models} per worker machine across its processes (GPU workers)")
    ru.add_argument("--model-copies", type=int, default=None,
                    help="with --large-model: copies per machine, e.g. one per GPU (unset: one)")
    ru.add_argument("--decode-size", type=int, default=512,
                    help=f"decode images at about this shorter side (JPEG draft mode); the {models} resize further")
    ru.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help="reject images with more pixels than this, before decoding")
    ru.add_argument("--quiet", action="store_true", help="no progress lines on stderr while the job runs")
    ru.add_argument("--read-retries", type=int, default=3,
                    help="retries for transient read errors over HTTP(S) and local files "
                         "(gs:// and s3:// retry in gcsfs/s3fs)")


def _with_recorded(ap: CommandParser, recorded: dict | None) -> CommandParser:
    """`recorded`: a run's options (--retry-failures) to start from instead of the defaults,
    so only the flags on the command line replace them."""
    if recorded:
        ap.set_defaults(**recorded)
    return ap


# ---- the three commands ------------------------------------------------------------

def labeling_parser(recorded: dict | None = None) -> CommandParser:
    """python -m pipelines.pseudo_label."""
    ap = CommandParser(
        prog="python -m pipelines.pseudo_label",
        description="Label images with teacher captioner and tagger models into Parquet (Apache Beam).",
        epilog=BEAM_EPILOG)
    add_io_args(ap, verb="label")
    te = ap.add_argument_group("teachers")
    te.add_argument("--captioner", default=DEFAULT_CAPTIONER,
                    help="hub id[@revision], local dir, gs:// or s3:// dir, 'tiny' / 'tiny:git', or 'none'")
    te.add_argument("--tagger", default=DEFAULT_TAGGER,
                    help="hub id[@revision], local dir, gs:// or s3:// dir, 'tiny' / 'tiny:clip', or 'none'")
    te.add_argument("--num-captions", type=int, default=3, help="captions kept per image")
    te.add_argument("--num-beams", type=int, default=5, help="beam search width")
    te.add_argument("--max-new-tokens", type=int, default=30, help="longest caption, in tokens")
    te.add_argument("--caption-prompt", "--prompt", dest="caption_prompt", default=None,
                    help="the captioner's prompt: text a captioner continues (BLIP, BLIP-2, GIT; not part of the "
                         "caption), a Florence-2 task token (unset: <CAPTION>; <DETAILED_CAPTION>, "
                         "<MORE_DETAILED_CAPTION>), or the instruction a chat VLM (SmolVLM, Qwen2-VL) needs, e.g. "
                         "'Describe this image in one sentence.'")
    te.add_argument("--tag-vocab", default=DEFAULT_VOCAB,
                    help="LabelName,DisplayName CSV (Open Images class descriptions format)")
    te.add_argument("--tag-threshold", type=float, default=0.1, help="keep tags scoring at least this")
    te.add_argument("--max-tags", type=int, default=10, help="tags kept per image")
    te.add_argument("--tag-prompt", default="a photo of a {}.", help="zero-shot text for each tag name")
    te.add_argument("--rerank", action="store_true",
                    help="score every caption against its image with the tagger's image-text model, store it as "
                         "the caption's similarity and put the best first (SigLIP: its calibrated sigmoid "
                         "probability in [0, 1]; CLIP: the cosine similarity in [-1, 1]). Needs both teachers")
    te.add_argument("--min-caption-similarity", type=float, default=None, metavar="X",
                    help="implies --rerank: drop captions whose similarity is below X; an image left with no "
                         "caption is not labeled but written to failures/ (stage 'rerank', error_type "
                         "'LowCaptionSimilarity', the message names its best similarity and X)")
    te.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="the teachers' precision. auto: bfloat16 on GPUs that run it natively (A100, L4, H100), "
                         "float16 on older GPUs (T4, V100), float32 on CPUs. bfloat16/float16 on a CPU only for the "
                         "families verified there. Attention is PyTorch's SDPA where the model supports it, else "
                         "eager; rows record what ran (teacher_params.<stage>.runtime)")
    te.add_argument("--trust-remote-code", action="store_true",
                    help="allow model code from the hub (off by default: it runs arbitrary code)")
    te.add_argument("--cache-dir", default=None, help="teacher cache (unset: $MINIVLM_CACHE or ~/.cache/minivlm)")
    add_inference_args(ap, models="teachers")
    return _with_recorded(ap, recorded)


def features_parser(recorded: dict | None = None) -> CommandParser:
    """python -m pipelines.extract_features."""
    ap = CommandParser(
        prog="python -m pipelines.extract_features",
        description="Extract TEE region features (boxes, scores, labels, float16 vectors) from images "
                    "into Parquet (Apache Beam).",
        epilog=BEAM_EPILOG)
    add_io_args(ap, verb="extract")
    te = ap.add_argument_group("extractor")
    te.add_argument("--tee", default=None,
                    help="a TEE directory written by TEE.save_pretrained (local, gs://, s3://), "
                         "or 'tiny' (a seeded random tee-tiny, for tests and smoke runs); required, except "
                         "with --retry-failures, which reruns with the run's own")
    te.add_argument("--cache-dir", default=None,
                    help="where 'tiny' is built (unset: $MINIVLM_CACHE or ~/.cache/minivlm)")
    add_inference_args(ap, models="TEE")
    return _with_recorded(ap, recorded)


def corpus_parser() -> CommandParser:
    """python -m pipelines.build_corpus."""
    ap = CommandParser(
        prog="python -m pipelines.build_corpus",
        description="Join labels and region features by image_id into shuffled Parquet training shards "
                    "and a held-out validation split (Apache Beam).",
        epilog=BEAM_EPILOG)
    ap.add_argument("--labels", required=True,
                    help="the labeling job's labels table: a folder of Parquet files, a glob, or one file "
                         "(local, gs://, s3://), e.g. LABELED/labels")
    ap.add_argument("--features", required=True,
                    help="the feature extraction job's features table, e.g. EXTRACTED/features")
    ap.add_argument("--output", required=True, help="corpus directory (local, gs://, s3://)")
    ap.add_argument("--shard-rows", type=int, default=10000,
                    help="rows per shard on average (shards of a split: ceil(rows / this); sizes vary a little)")
    ap.add_argument("--val-fraction", type=float, default=0.01,
                    help="fraction of images held out as the validation split, chosen by a hash of image_id")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split and the shuffle")
    ap.add_argument("--compression", default="zstd", choices=CODECS, help="Parquet codec")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous corpus in --output")
    # The join is one-shot (it shuffles every row into every shard), so there is nothing to
    # continue: --resume is refused with that reason rather than as an unknown flag.
    ap.add_argument("--resume", action="store_true", help="refused: the join cannot be continued; rerun with "
                                                          "--overwrite")
    return ap
