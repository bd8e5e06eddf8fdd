"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) exactly as the COCO server scores.

The numbers come from pycocoevalcap, the code behind COCO's caption leaderboard, driven
the way its `COCOEvalCap.evaluate` drives it: both sides go through Stanford's
PTBTokenizer (Java, lower-cased, punctuation dropped), then Bleu(4), Meteor(), Rouge()
and Cider() score the tokenized captions. SPICE is left out: it downloads Stanford
CoreNLP models on first use, and tests and offline runs cannot.

Two departures from `COCOEvalCap`, neither changing a score on well-formed input:

- Tokenization runs here, on one Java process for both sides, with pycocoevalcap's own
  jar and punctuation list. pycocoevalcap's `PTBTokenizer` writes its temp file into its
  own package directory (site-packages: read-only in many images) and pairs output lines
  with captions by position without checking the count, so a caption holding a `\\r` or a
  Unicode line separator (Java ends a line there; pycocoevalcap only replaces `\\n`)
  shifts every later caption onto the wrong image. Here the temp file goes to the system
  temp directory, every line break becomes a space, and the line count is checked.
- METEOR's Java process (a 2 GB-heap JVM that loads a paraphrase table: several seconds
  to start) is closed as soon as its scores are read, not whenever `Meteor.__del__` runs.

Java must be on PATH. Image ids are strings throughout.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from schemas.io import iter_file_batches, parquet_files
from schemas.labels import LABELS

log = logging.getLogger(__name__)

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")

# Every character Python's str.splitlines() breaks at; Java's tokenizer ends a line at
# \r, \u2028, \u2029 and \x85 too, so none may reach it inside a caption.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _few(ids: Iterable[str], k: int = 5) -> str:
    """A handful of ids for an error message, sorted so the message is reproducible."""
    ids = sorted(ids)
    shown = ", ".join(repr(i) for i in ids[:k])
    return shown + (f", ... ({len(ids) - k} more)" if len(ids) > k else "")


def _check_inputs(references: Mapping[str, list[str]], predictions: Mapping[str, str]) -> None:
    bad_keys = [k for k in (*references, *predictions) if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"image ids must be strings; got {type(bad_keys[0]).__name__} ids such as {bad_keys[0]!r}")
    if not references:
        raise ValueError("no references to score against")
    unknown = set(predictions) - set(references)
    if unknown:
        raise ValueError(f"{len(unknown)} predictions are for images not in the references: {_few(unknown)}")
    missing = set(references) - set(predictions)
    if missing:
        raise ValueError(f"{len(missing)} reference images have no prediction: {_few(missing)}")
    for image_id, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
            raise TypeError(f"references of image {image_id!r} must be a list of strings, got {type(refs).__name__}")
        if not refs:
            raise ValueError(f"image {image_id!r} has an empty reference list")
        for k, ref in enumerate(refs):
            if not isinstance(ref, str) or not ref.strip():
                raise ValueError(f"reference {k} of image {image_id!r} is not a non-blank string: {ref!r}")
    for image_id, caption in predictions.items():
        # An empty prediction is a legitimate (bad) caption and scores 0; a non-string is a bug.
        if not isinstance(caption, str):
            raise TypeError(f"prediction for image {image_id!r} must be a string, got {type(caption).__name__}")


def ptb_tokenize(captions: list[str]) -> list[str]:
    """PTB-tokenize captions the way pycocoevalcap's PTBTokenizer does, one Java run for all.

    Same jar, same flags (`-preserveLines -lowerCase`: one output line per input line),
    same punctuation tokens removed afterwards. Like COCO's, that list names brackets
    "-LRB-"/"-RRB-" while the tokens come out lower-cased, so "(" survives as "-lrb-".
    """
    if not captions:
        return []
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("COCO caption metrics need a Java runtime on PATH (PTB tokenizer, METEOR); none found")
    jar_dir = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
    jar = os.path.join(jar_dir, ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    text = "\n".join(_LINE_BREAKS.sub(" ", c) for c in captions)
    with tempfile.TemporaryDirectory(prefix="ptb-") as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        proc = subprocess.run(
            [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path],
            stdin=subprocess.DEVNULL, capture_output=True, check=False,
        )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"PTB tokenizer (java) exited {proc.returncode}: {err}")
    # The tokenizer copies the input's line ends: n captions in, n lines out (the last
    # without a newline unless it is empty), so a count check catches any drift.
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) != len(captions):
        raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(captions)} captions")
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punctuation) for line in lines]


def _tokenize_both(references: Mapping[str, list[str]], predictions: Mapping[str, str], ids: list[str]):
    """(gts, res) in pycocoevalcap's shape: {image_id: [tokenized, ...]}, one hypothesis each."""
    flat = [ref for i in ids for ref in references[i]] + [predictions[i] for i in ids]
    tokens = iter(ptb_tokenize(flat))
    gts = {i: [next(tokens) for _ in references[i]] for i in ids}
    res = {i: [next(tokens)] for i in ids}
    return gts, res


def _close_meteor(meteor: Meteor) -> str:
    """End METEOR's JVM now and return what it wrote to stderr (for error messages)."""
    proc = meteor.meteor_p
    try:
        proc.stdin.close()
    except OSError:  # a JVM that already died leaves a broken pipe behind
        pass
    proc.kill()
    proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    proc.stdout.close()
    proc.stderr.close()
    # Meteor.__del__ acquires this lock before cleaning up; a compute_score that raised
    # midway left it held, and __del__ would then block the garbage collector forever.
    meteor.lock = threading.Lock()
    return err


def _meteor(gts: dict, res: dict):
    meteor = Meteor()
    try:
        return meteor.compute_score(gts, res)
    except Exception as e:
        err = _close_meteor(meteor)
        raise RuntimeError(f"METEOR (java -jar meteor-1.5.jar) failed: {e!r}; stderr: {err[-2000:]}") from e
    finally:
        if meteor.meteor_p.returncode is None:  # not closed above (success, or Ctrl-C)
            _close_meteor(meteor)


def score_captions(references: dict[str, list[str]], predictions: dict[str, str], *, meteor: bool = True) -> dict:
    """Score one predicted caption per image against that image's reference captions.

    Returns {"metrics": {name: corpus score}, "per_image": {image_id: {name: score}},
    "images": n}. Every reference image needs a prediction and every prediction a
    reference image (ValueError otherwise: whether to drop or to fail is the caller's
    choice). An empty prediction is allowed and scores 0. `meteor=False` skips METEOR,
    the slow one (a JVM with a 2 GB heap and a paraphrase table), and leaves its key out.

    BLEU is corpus-level (n-gram counts summed over all images, as COCO reports it), so
    the corpus BLEU is not the mean of the per-image ones; METEOR's corpus score comes
    from its own aggregate statistics; ROUGE-L and CIDEr-D are per-image means.

    CIDEr-D: pycocoevalcap's `Cider` is CIDEr-D, the variant COCO reports: tf-idf n-gram
    vectors (n = 1..4) without stemming, a Gaussian penalty on the length difference to
    each reference (sigma 6), candidate counts clipped to the reference's, mean over
    references, times 10. Its idf comes from the reference captions of the images being
    scored (document frequency over images, log of the image count), so a CIDEr-D value
    depends on the evaluation set, as on COCO: compare numbers over the same images only.
    One image alone always scores 0 (every n-gram then has idf log(1) - log(1) = 0).
    """
    _check_inputs(references, predictions)
    ids = list(references)
    gts, res = _tokenize_both(references, predictions, ids)

    metrics: dict[str, float] = {}
    per_image: dict[str, dict[str, float]] = {i: {} for i in ids}

    def put(name: str, score, scores) -> None:
        metrics[name] = float(score)
        for i, s in zip(ids, scores):
            per_image[i][name] = float(s)

    # The order COCOEvalCap uses. Scorers iterate gts.keys(), i.e. `ids` order.
    bleu, bleus = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        put(f"BLEU-{n + 1}", bleu[n], bleus[n])
    if meteor:
        put("METEOR", *_meteor(gts, res))
    put("ROUGE-L", *Rouge().compute_score(gts, res))
    put("CIDEr-D", *Cider().compute_score(gts, res))
    return {"metrics": metrics, "per_image": per_image, "images": len(ids)}


def teacher_references(labels_path: str, image_ids: set[str] | None, *,
                       top: int | None = None) -> dict[str, list[str]]:
    """The teacher's pseudo captions (best first; all, or the `top` best) for the given images.

    Streams the labels table (`labels_path`: a directory, glob or file, any fsspec URL)
    a batch at a time and keeps only the rows asked for, so memory grows with
    `image_ids`, not with the table; `image_ids=None` asks for every image of the table
    (memory then grows with the table). Ids the table does not have are simply absent from
    the result, as are images whose captions are all blank; the caller compares keys.
    If an image has several rows (two labeling runs in one folder), the first in file
    order wins and a warning counts the others.
    """
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top must be a positive integer or None, got {top!r}")
    wanted = None if image_ids is None else set(image_ids)
    bad = [i for i in wanted or () if not isinstance(i, str)]
    if bad:
        raise TypeError(f"image ids must be strings; got {type(bad[0]).__name__} ids such as {bad[0]!r}")
    files = parquet_files(labels_path)
    if not files:
        raise ValueError(f"no labels Parquet files at {labels_path}")
    refs: dict[str, list[str]] = {}
    if wanted is not None and not wanted:
        return refs
    value_set = None if wanted is None else pa.array(sorted(wanted), type=pa.string())
    seen: set[str] = set()
    duplicates = 0
    for file in files:
        for batch in iter_file_batches(file, LABELS, ["image_id", "captions"]):
            # Filter in Arrow first: only the asked-for rows become Python objects.
            if value_set is not None:
                batch = batch.filter(pc.is_in(batch.column("image_id"), value_set=value_set))
            for row in batch.to_pylist():
                image_id = row["image_id"]
                if image_id in seen:
                    duplicates += 1
                    continue
                seen.add(image_id)
                texts = [c["text"] for c in row["captions"] or () if c["text"] and c["text"].strip()]
                if texts:
                    refs[image_id] = texts[:top] if top is not None else texts
    if duplicates:
        log.warning("%s: %d duplicate labels rows for the asked-for images ignored (first row kept)",
                    labels_path, duplicates)
    return refs


# Words per caption, binned the same for every caption set so that one-sentence captions
# (COCO-style, about ten words) and spoken narratives, several times longer, read side by side.
LENGTH_BINS = ((0, 0), (1, 5), (6, 10), (11, 15), (16, 20), (21, 30), (31, 40), (41, 60), (61, 80), (81, None))


def _bin_name(low: int, high: int | None) -> str:
    if high is None:
        return f"{low}+"
    return str(low) if low == high else f"{low}-{high}"


def length_stats(captions: Iterable[str]) -> dict:
    """Words per caption (whitespace-separated, as written): count, min, median, mean, max, histogram.

    The histogram is {"0": n, "1-5": n, "6-10": n, ..., "81+": n} over LENGTH_BINS, every
    bin present. No captions at all gives count 0 and None for the statistics.
    """
    lengths = sorted(len(c.split()) for c in captions)
    histogram = {_bin_name(low, high): 0 for low, high in LENGTH_BINS}
    for n in lengths:
        low, high = next(b for b in LENGTH_BINS if b[1] is None or n <= b[1])
        histogram[_bin_name(low, high)] += 1
    if not lengths:
        return {"captions": 0, "min": None, "median": None, "mean": None, "max": None, "histogram": histogram}
    return {"captions": len(lengths), "min": lengths[0], "median": float(statistics.median(lengths)),
            "mean": sum(lengths) / len(lengths), "max": lengths[-1], "histogram": histogram}


def format_lengths(rows: dict[str, dict]) -> str:
    """Named length_stats as a plain-text table: the statistics, then the histogram bins
    from the first to the last one any row fills (empty bins between them stay visible)."""
    names = [_bin_name(*b) for b in LENGTH_BINS]
    filled = [k for k, b in enumerate(names) if any(r["histogram"].get(b) for r in rows.values())]
    bins = names[filled[0]:filled[-1] + 1] if filled else []

    def cell(value) -> str:
        return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)

    header = ["words per caption", "captions", "min", "median", "mean", "max", *bins]
    body = [[name, *(cell(r[k]) for k in ("captions", "min", "median", "mean", "max")),
             *(str(r["histogram"][b]) for b in bins)] for name, r in rows.items()]
    widths = [max(len(line[k]) for line in (header, *body)) for k in range(len(header))]
    return "\n".join("  ".join([line[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(line[1:], widths[1:]))])
                     for line in (header, *body))


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one line per named result, a column per metric any row has.

    Scores print with 3 decimals (as COCO reports them: fractions, CIDEr-D on its x10
    scale); a metric a row lacks prints as "-".
    """
    if not rows:
        raise ValueError("no results to format")
    columns = [m for m in METRICS if any(m in r for r in rows.values())]
    header = ["", *columns]
    body = [[name, *(f"{r[m]:.3f}" if m in r else "-" for m in columns)] for name, r in rows.items()]
    widths = [max(len(line[k]) for line in (header, *body)) for k in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join([line[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(line[1:], widths[1:]))]).rstrip()

    return "\n".join([fmt(header), *(fmt(line) for line in body)])
