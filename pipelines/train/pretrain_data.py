"""The student's pre-training data: corpus shards streamed into OSCAR-style batches.

Corpus shards (pipelines.build_corpus) are read through fsspec in row batches. Readers
(processes x DataLoader workers) split the shards between them when there are at
least as many shards as readers, and split rows by position when there are fewer; in
both cases no row is read twice in an epoch. Each epoch reshuffles the shard order and
mixes rows in a shuffle buffer, both from the seed, so a run is reproducible and a
resumed run continues exactly (pipelines.train.loop.ResumableStream).

Per sample: one of the row's captions (drawn anew each epoch), its teacher tags and its
TEE regions. Per batch: tokenisation, masking (15% of caption and tag tokens; of those
80% [MASK], 10% a random token, 10% unchanged) and pollution for the contrastive head
(50% matched, 25% caption from another row, 25% tags from another row of the batch). A
donor must differ in what it lends: on templated or near-duplicate data a random row of the
batch often has the very same caption or tags, and "polluted" by an identical text is a
matched pair labelled wrong (7.8% of random donors on the synthetic scenes had the same
tags). A sample with no such donor in its batch stays matched.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from models.captioning import tags_from_regions
from models.minivlm import MATCHED, POLLUTED_CAPTION, POLLUTED_TAGS
from pipelines.data.text import caption_key
from pipelines.train.streams import ResumableStream, shuffled

log = logging.getLogger(__name__)
COLUMNS = ["image_id", "captions", "tags", "num_regions", "boxes", "features", "feature_dim"]


@dataclass(frozen=True)
class ObjectiveConfig:
    mask_prob: float = 0.15
    mask_token: float = 0.8  # of the chosen tokens: replaced by [MASK]
    random_token: float = 0.1  # ... by a random token; the rest stay as they are
    polluted_caption: float = 0.25
    polluted_tags: float = 0.25

    def __post_init__(self):
        for name in ("mask_prob", "mask_token", "random_token", "polluted_caption", "polluted_tags"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if self.mask_token + self.random_token > 1 or self.polluted_caption + self.polluted_tags > 1:
            raise ValueError("mask_token + random_token and polluted_caption + polluted_tags must be <= 1")


@dataclass
class Sample:
    image_id: str
    caption: str
    tags: str
    features: np.ndarray  # (R, D) float32
    boxes: np.ndarray  # (R, 4) float32
    seed: int  # for the batch-level draws about this sample (masking, pollution)


def shard_files(path: str) -> list[str]:
    from schemas.io import parquet_files

    return parquet_files(path)


def check_corpus_finished(corpus: str) -> None:
    """A corpus folder whose run record says build_corpus did not finish is refused (ValueError).

    build_corpus publishes its shards one by one; a run stopped mid-way leaves run.json at
    "running" and a partial set of shards, which must never be trained on as a corpus.
    """
    import json

    from pipelines.data import storage

    record = storage.join(corpus, "run.json")
    if not storage.exists(record):
        return  # shards laid out by hand (tests, other tools): nothing says they are partial
    try:
        status = json.loads(storage.read_text(record)).get("status")
    except (ValueError, AttributeError):
        status = None
    if status != "succeeded":
        raise ValueError(f"{corpus} is not a finished corpus (run.json status {status!r}): build_corpus stopped "
                         "before the end; rerun it with --overwrite")


def check_shards(files: list[str], schema=None) -> None:
    """Every shard is a `schema` table (default: corpus) of a version this release reads
    (raises SchemaVersionError)."""
    from schemas import CORPUS
    from schemas.io import file_schema

    for f in files:
        file_schema(f, schema or CORPUS)


def extractors(files: list[str]) -> Counter:
    """Rows per TEE extractor id over the shards (reads one column)."""
    from schemas.io import read_file

    seen: Counter = Counter()
    for f in files:
        seen.update(read_file(f, columns=["extractor"]).column("extractor").to_pylist())
    return seen


def check_extractors(files: list[str], extractor_id: str, *, allow_mismatch: bool, tee: str) -> Counter:
    """Rows per extractor id; ValueError when some came from another TEE than the student's
    (its features would not match what the student sees at inference), unless allowed."""
    seen = extractors(files)
    if any(k != extractor_id for k in seen) and not allow_mismatch:
        raise ValueError(f"the features come from {dict(seen)}, but the student's TEE ({tee}) is {extractor_id}: "
                         "use the TEE that extracted them, or pass --allow-extractor-mismatch")
    return seen


def iter_rows(files: list[str], readers: int = 1, slot: int = 0, batch_rows: int = 256,
              columns: list[str] = COLUMNS):
    """Rows of the given shards as dicts (features and boxes kept as flat arrays), this reader's share.

    `columns` must include features and boxes; corpus and features tables both work. A
    column a file does not have (one an older version predates) is left out of its rows."""
    from schemas.io import file_schema, iter_file_batches

    by_shard = len(files) >= readers
    mine = files[slot::readers] if by_shard else files
    position = 0
    for f in mine:
        names = set(file_schema(f).names)
        present = [c for c in columns if c in names or c in ("features", "boxes")]
        for rb in iter_file_batches(f, columns=present, batch_rows=batch_rows):
            feats, boxes = rb.column("features"), rb.column("boxes")
            flat = feats.flatten().to_numpy(zero_copy_only=False)  # float16, all rows of the batch
            offsets = feats.offsets.to_numpy()
            offsets = offsets - offsets[0]  # flatten() honours slicing; offsets are absolute
            box_flat = boxes.flatten().flatten().to_numpy(zero_copy_only=False)
            box_off = boxes.offsets.to_numpy()
            box_off = box_off - box_off[0]
            meta = rb.select([c for c in present if c not in ("features", "boxes")]).to_pylist()
            for j, row in enumerate(meta):
                position += 1
                if not by_shard and (position - 1) % readers != slot:
                    continue
                row["features"] = flat[offsets[j]:offsets[j + 1]]
                row["boxes"] = box_flat[box_off[j] * 4:box_off[j + 1] * 4]
                yield row


class CorpusStream(ResumableStream):
    def __init__(self, files: list[str], *, feature_dim: int, max_regions: int, shuffle_buffer: int = 1000,
                 seed: int, batch_size: int, rank: int = 0, world: int = 1):
        super().__init__(seed=seed, batch_size=batch_size, rank=rank, world=world)
        if not files:
            raise ValueError("no corpus shards")
        self.files, self.feature_dim, self.max_regions = sorted(files), feature_dim, max_regions
        self.shuffle_buffer = shuffle_buffer
        self.skipped: Counter = Counter()

    def items(self, epoch: int, readers: int, slot: int):
        order = list(self.files)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        rows = iter_rows(order, readers, slot)
        return shuffled(rows, self.shuffle_buffer, random.Random((self.seed + 1) * 1_000_003 + epoch))

    def load(self, row: dict, rng: np.random.Generator) -> Sample | None:
        reason = _problem(row, self.feature_dim)
        if reason:
            self.skipped[reason] += 1
            log.warning("skipping corpus row %s: %s (skipped so far in this reader: %s)",
                        row.get("image_id"), reason, dict(self.skipped))
            return None
        n, d = int(row["num_regions"]), int(row["feature_dim"])
        keep = min(n, self.max_regions)
        captions = [c["text"] for c in row["captions"]]
        tags = " ".join(t["name"] for t in row["tags"])
        return Sample(image_id=row["image_id"], caption=captions[int(rng.integers(len(captions)))], tags=tags,
                      features=row["features"].reshape(n, d)[:keep].astype(np.float32),
                      boxes=row["boxes"].reshape(n, 4)[:keep].astype(np.float32),
                      seed=int(rng.integers(2**63 - 1)))


def _problem(row: dict, feature_dim: int) -> str | None:
    """Why a corpus row cannot pre-train the student, or None."""
    reason = region_problem(row, feature_dim)
    if reason is None and (not row.get("captions") or not any((c.get("text") or "").strip() for c in row["captions"])):
        return "no caption"
    return reason


def region_problem(row: dict, feature_dim: int) -> str | None:
    """Why a row's regions cannot feed the student, or None (shared with caption fine-tuning)."""
    try:
        n, d = int(row["num_regions"]), int(row["feature_dim"])
    except (TypeError, ValueError, KeyError):
        return "malformed region counts"
    if d != feature_dim:
        return f"feature_dim {d} != the student's {feature_dim}"
    if n < 1 or row["features"] is None or len(row["features"]) != n * d:
        return "features do not match num_regions x feature_dim"
    if row["boxes"] is None or len(row["boxes"]) != n * 4:
        return "boxes do not match num_regions"
    if not np.isfinite(row["features"]).all():
        return "non-finite features"
    return None


def row_regions(row: dict, max_regions: int, tag_min_score: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A features or corpus row (checked by region_problem) -> the TEE's tags, (R, D) features and
    (R, 4) boxes, at most max_regions: what a fine-tuned student sees of an image."""
    n, d = int(row["num_regions"]), int(row["feature_dim"])
    keep = min(n, max_regions)
    names = row.get("region_names") or row.get("names") or []
    scores = row.get("region_scores") or row.get("scores") or []
    attributes = row.get("region_attributes") or row.get("attributes")
    return (tags_from_regions(names, scores, tag_min_score, attributes),
            np.asarray(row["features"]).reshape(n, d)[:keep].astype(np.float32),
            np.asarray(row["boxes"]).reshape(n, 4)[:keep].astype(np.float32))


class PretrainCollate:
    """Samples -> one batch of tensors for MiniVLM.pretraining_outputs."""

    def __init__(self, tokenizer, config, objective: ObjectiveConfig):
        self.tok, self.config, self.obj = tokenizer, config, objective
        self.special = {config.pad_token_id, config.cls_token_id, config.sep_token_id, config.mask_token_id}

    def _ids(self, texts: list[str], limit: int) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]

    def __call__(self, samples: list[Sample]) -> dict:
        c, obj, b = self.config, self.obj, len(samples)
        rngs = [np.random.default_rng(s.seed) for s in samples]
        captions, tags = [s.caption for s in samples], [s.tags for s in samples]
        labels = np.full(b, MATCHED)
        keys = {f: [caption_key(getattr(s, f)) for s in samples] for f in ("caption", "tags")}  # once per batch
        for i, rng in enumerate(rngs):
            u = rng.random()
            if u < obj.polluted_caption:
                field, label = "caption", POLLUTED_CAPTION
            elif u < obj.polluted_caption + obj.polluted_tags:
                field, label = "tags", POLLUTED_TAGS
            else:
                continue
            donors = [j for j in range(b) if keys[field][j] != keys[field][i]]
            if not donors:
                continue  # nothing in the batch says something else: matched
            donor = donors[int(rng.integers(len(donors)))]
            if field == "caption":
                captions[i] = samples[donor].caption
            else:
                tags[i] = samples[donor].tags
            labels[i] = label
        cap_ids, tag_ids = self._ids(captions, c.max_caption_tokens), self._ids(tags, c.max_tag_tokens)
        t = c.text_length
        input_ids = np.full((b, t), c.pad_token_id, dtype=np.int64)
        types = np.zeros((b, t), dtype=np.int64)
        text_mask = np.zeros((b, t), dtype=np.int64)
        mlm = np.full((b, t), -100, dtype=np.int64)
        for i in range(b):
            seq = [c.cls_token_id, *cap_ids[i], c.sep_token_id, *tag_ids[i], c.sep_token_id]
            input_ids[i, :len(seq)] = seq
            types[i, len(cap_ids[i]) + 2:len(seq)] = 1
            text_mask[i, :len(seq)] = 1
            self._mask(input_ids[i, :len(seq)], mlm[i, :len(seq)], rngs[i])
        r = max(len(s.features) for s in samples)
        feats = np.zeros((b, r, c.region_feature_dim), dtype=np.float32)
        boxes = np.zeros((b, r, 4), dtype=np.float32)
        region_mask = np.zeros((b, r), dtype=np.int64)
        for i, s in enumerate(samples):
            n = len(s.features)
            feats[i, :n], boxes[i, :n], region_mask[i, :n] = s.features, s.boxes, 1
        return {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(types),
                "text_mask": torch.from_numpy(text_mask), "mlm_labels": torch.from_numpy(mlm),
                "region_features": torch.from_numpy(feats), "region_boxes": torch.from_numpy(boxes),
                "region_mask": torch.from_numpy(region_mask), "contrastive_labels": torch.from_numpy(labels)}

    def _mask(self, ids: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
        """In place: choose mask_prob of the non-special tokens; 80/10/10 as configured."""
        obj = self.obj
        for j, token in enumerate(ids):
            if int(token) in self.special or rng.random() >= obj.mask_prob:
                continue
            labels[j] = token
            u = rng.random()
            if u < obj.mask_token:
                ids[j] = self.config.mask_token_id
            elif u < obj.mask_token + obj.random_token:
                ids[j] = int(rng.integers(self.config.vocab_size))
