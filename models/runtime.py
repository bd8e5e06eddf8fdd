"""Caption with an ONNX export (models.export) on ONNX Runtime: NumPy, Pillow and tokenizers, no PyTorch.

    from models.runtime import load_onnx_captioner
    captioner = load_onnx_captioner("export/")        # a pipelines.export output
    captions = captioner(images)                       # HWC uint8 arrays -> [Caption(text, score, tags)]

The same steps as the eager student (models.captioning), and the same search
(models.decoding): letterbox in NumPy (Pillow's antialiased bilinear resize on float
planes, what torch's antialiased interpolate reproduces), the TEE graph per image, the
context through the fusion graph once per image, then one fusion call per decoding step
with the context and earlier words cached. Nothing here imports torch or transformers; a
test runs it with both imports blocked.
"""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from models.decoding import (
    Caption,
    check_decoding,
    log_softmax,
    region_arrays,
    search_captions,
    tags_from_regions,
    text_arrays,
)

FORMAT = "minivlm-onnx"
VERSION = 1
EXPORT_NAME = "export.json"
GRAPHS = {"vision": "vision.onnx", "fusion": "fusion.onnx"}
TOKENIZER_FILE = "tokenizer.json"
RECORD_KEYS = ("graphs", "tokenizer", "sha256", "fusion", "tee")  # what this runtime reads of export.json
FUSION_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "region_feature_dim", "max_caption_tokens",
               "max_tag_tokens", "max_regions", "caption_slot", "text_length", "tag_min_score", "pad_token_id",
               "cls_token_id", "sep_token_id", "mask_token_id", "banned", "special_tokens")
TEE_KEYS = ("image_size", "mean", "std", "classes", "attributes", "attribute_thresh")


class ExportProblem(ValueError):
    """An export directory that cannot run: a missing or corrupted file, a tokenizer that does not match."""


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def _read(url: str) -> bytes:
    import fsspec

    with fsspec.open(url, "rb") as f:
        return f.read()


def is_export(path: str) -> bool:
    """Whether `path` (local, gs://, s3://) holds an export (its export.json)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(path)
        return fs.exists(f"{root.rstrip('/')}/{EXPORT_NAME}")
    except (OSError, ValueError):
        return False


def read_export(directory: str) -> tuple[dict, dict[str, bytes]]:
    """(export.json, {file name: bytes} of every file it lists), each file checked against its sha256;
    ExportProblem naming the first file that is missing or differs."""
    try:
        record = json.loads(_read(_join(directory, EXPORT_NAME)))
    except FileNotFoundError as e:
        raise ExportProblem(f"{directory} is not an ONNX export (no {EXPORT_NAME}): make one with "
                            "python -m pipelines.export") from e
    except ValueError as e:
        raise ExportProblem(f"{_join(directory, EXPORT_NAME)} is not valid JSON: {e}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ExportProblem(f"{_join(directory, EXPORT_NAME)} is not a MiniVLM export ({FORMAT})")
    if record.get("version") != VERSION:
        raise ExportProblem(f"{directory} is export format version {record.get('version')}; this runtime reads "
                            f"version {VERSION}: export the checkpoint again")
    missing = ([k for k in RECORD_KEYS if k not in record]
               + [f"fusion.{k}" for k in FUSION_KEYS if k not in record.get("fusion", {})]
               + [f"tee.{k}" for k in TEE_KEYS if k not in record.get("tee", {})])
    if missing:
        raise ExportProblem(f"{_join(directory, EXPORT_NAME)} lacks {', '.join(missing)}: export the checkpoint again")
    files = {}
    for name in [*record["graphs"].values(), record["tokenizer"]]:
        try:
            data = _read(_join(directory, name))
        except FileNotFoundError as e:
            raise ExportProblem(f"{_join(directory, name)} is missing: the export is incomplete") from e
        if hashlib.sha256(data).hexdigest() != record["sha256"].get(name):
            raise ExportProblem(f"{_join(directory, name)} differs from the file exported (sha256 mismatch): "
                                "corrupted or replaced; export the checkpoint again")
        files[name] = data
    return record, files


def letterbox(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]
              ) -> tuple[np.ndarray, float, tuple[int, int]]:
    """HWC uint8 -> (3, size, size) float32 normalised, content at top-left; (pixels, scale, (h, w) of
    the content). models.tee.letterbox in NumPy: antialiased bilinear (Pillow on float planes, so no
    rounding to 8 bits), then ImageNet normalisation; zero (the mean colour) around the content."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    h, w = arr.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32), mode="F")
                         .resize((nw, nh), Image.BILINEAR)) for c in range(3)]
    x = np.stack(planes) / np.float32(255.0)  # (3, nh, nw)
    out = np.zeros((3, size, size), dtype=np.float32)
    out[:, :nh, :nw] = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    return out, scale, (nh, nw)


class OnnxCaptioner:
    """An export, ready: images (or stored regions) -> captions, as models.captioning.StudentCaptioner."""

    def __init__(self, directory: str, *, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        record, files = read_export(directory)
        self.directory, self.record = directory, record
        self.config = SimpleNamespace(**{k: v for k, v in record["fusion"].items() if k != "banned"})
        self.tee = record["tee"]
        self.banned = list(record["fusion"]["banned"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {}
        for part, name in record["graphs"].items():
            try:
                self.sessions[part] = ort.InferenceSession(files[name], options, providers=["CPUExecutionProvider"])
            except Exception as e:  # ORT's own message, made one line
                raise ExportProblem(f"{_join(directory, name)} does not load in ONNX Runtime: "
                                    f"{' '.join(str(e).split())[:300]}") from e
        self.tokenizer = Tokenizer.from_str(files[record["tokenizer"]].decode("utf-8"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._check_tokenizer()

    def _check_tokenizer(self) -> None:
        c, tok = self.config, self.tokenizer
        if tok.get_vocab_size(with_added_tokens=True) != c.vocab_size:
            raise ExportProblem(f"{_join(self.directory, self.record['tokenizer'])} has "
                                f"{tok.get_vocab_size(with_added_tokens=True)} tokens, the fusion {c.vocab_size}: "
                                "not the tokenizer it was trained with")
        for name, token in c.special_tokens.items():
            wanted = getattr(c, f"{name}_token_id")
            if tok.token_to_id(token) != wanted:
                raise ExportProblem(f"{_join(self.directory, self.record['tokenizer'])} gives {token} the id "
                                    f"{tok.token_to_id(token)}, the fusion {wanted}: not the tokenizer it was "
                                    "trained with")

    # ---- what pipelines.caption asks of a captioner ------------------------------------

    @property
    def image_size(self) -> int:
        return self.tee["image_size"]

    @property
    def max_caption_tokens(self) -> int:
        return self.config.max_caption_tokens

    @property
    def tiny_random(self) -> bool:
        """Made from a tiny random fusion (a test model)."""
        return bool(self.record.get("tiny_random"))

    # ---- vision -------------------------------------------------------------------------

    def regions(self, images: Sequence[np.ndarray]) -> list[dict]:
        """HWC uint8 images -> per image its regions: boxes (n, 4) normalised xyxy in the original
        image, scores (n,), classes (n,), names, labels, features (n, D), attributes (names per region)."""
        t, out = self.tee, []
        for image in images:
            pixels, scale, (nh, nw) = letterbox(image, t["image_size"], t["mean"], t["std"])
            found = self.sessions["vision"].run(None, {"pixels": pixels[None],
                                                       "size": np.array([nh, nw], dtype=np.int64)})
            boxes, scores, classes, features, count = found[:5]
            n = min(int(count), len(boxes))
            h, w = np.asarray(image).shape[:2]
            b = boxes[:n].astype(np.float32) / np.float32(scale)
            b[:, 0::2] = np.clip(b[:, 0::2], 0, w) / w
            b[:, 1::2] = np.clip(b[:, 1::2], 0, h) / h
            names = [t["classes"][k - 1][1] for k in classes[:n]]
            attributes = None
            if len(found) > 5:
                attributes = [[t["attributes"][i][1] for i in np.argsort(-row, kind="stable")
                               if row[i] >= t["attribute_thresh"]] for row in found[5][:n]]
            out.append({"boxes": b, "scores": scores[:n].astype(np.float32), "classes": classes[:n].astype(np.int64),
                        "labels": [t["classes"][k - 1][0] for k in classes[:n]], "names": names,
                        "features": features[:n].astype(np.float32), "attributes": attributes})
        return out

    # ---- captions -----------------------------------------------------------------------

    def __call__(self, images: Sequence[np.ndarray], *, beam_size: int = 5, max_length: int = 20,
                 greedy: bool = False) -> list[Caption]:
        if len(images) == 0:
            return []
        found = self.regions(images)
        r = self.config.max_regions
        return self.caption_regions([f["features"][:r] for f in found], [f["boxes"][:r] for f in found],
                                    [tags_from_regions(f["names"], f["scores"], self.config.tag_min_score,
                                                       f["attributes"]) for f in found],
                                    beam_size=beam_size, max_length=max_length, greedy=greedy)

    def caption_regions(self, features: list[np.ndarray], boxes: list[np.ndarray], tags: list[list[str]], *,
                        beam_size: int = 5, max_length: int = 20, greedy: bool = False) -> list[Caption]:
        """Stored regions ((n, D) features, (n, 4) normalised boxes, tag names) -> captions."""
        check_decoding(beam_size, max_length, self.config.max_caption_tokens)
        if not len(features):
            return []
        step = OnnxStep(self, self.tag_ids(tags), features, boxes)
        return search_captions(step, tags, lambda words: self.tokenizer.decode(words, skip_special_tokens=True),
                               beam_size=beam_size, max_length=max_length, greedy=greedy)

    def tag_ids(self, tags: list[list[str]]) -> list[list[int]]:
        """Tag names -> word-piece ids, at most max_tag_tokens (models.captioning.tag_token_ids)."""
        encoded = self.tokenizer.encode_batch([" ".join(t) for t in tags], add_special_tokens=False)
        return [e.ids[:self.config.max_tag_tokens] for e in encoded]


class OnnxStep:
    """models.captioning.CachedStep on the fusion graph: the context's keys/values once per image,
    then two new positions per call (the newest word, the [MASK]) against everything cached.

    Per hypothesis one buffer of C context + S caption positions, (L, N, h, C + S, d), and
    which of them are real (N, C + S). The graph gets the whole buffer with that mask, so
    NumPy never slices or copies it per step (ONNX Runtime reads it in place); inside, each
    layer joins it with the two new positions and attends over every slot, the unfilled
    ones masked (they weigh exactly nothing), a little more attention than eager's C + t + 2."""

    def __init__(self, captioner: OnnxCaptioner, tag_ids: list[list[int]], features: list[np.ndarray],
                 boxes: list[np.ndarray]):
        c = self.config = captioner.config
        self.session = captioner.sessions["fusion"]
        self.sep_token_id, self.pad_token_id = c.sep_token_id, c.pad_token_id
        self.banned = np.asarray(captioner.banned, dtype=np.int64)
        b, slot = len(tag_ids), c.caption_slot
        text = {k: np.ascontiguousarray(v[:, slot:]) for k, v in text_arrays(c, [[]] * b, tag_ids).items()}  # tags
        regions = region_arrays(features, boxes, c.region_feature_dim)
        ids, feats, box = text["input_ids"], regions["region_features"], regions["region_boxes"]
        mask = np.concatenate([text["text_mask"], regions["region_mask"]], axis=1)
        self.context_mask = mask.astype(bool)  # (B, C)
        context = self.context_mask.shape[1]
        # as eager: real positions are keys; a padded one still sees itself (its output is never a key)
        allowed = self.context_mask[:, None, :] | np.eye(context, dtype=bool)  # (B, C, C)
        positions = np.broadcast_to(np.arange(slot, c.text_length, dtype=np.int64), ids.shape)
        nothing = self._empty(b)
        self.context_keys, self.context_values, _ = self._run(ids, text["token_type_ids"], positions, feats, box,
                                                               nothing, nothing, allowed[:, None])
        self.rows = np.zeros(0, dtype=np.int64)
        self.length = 0

    def _empty(self, n: int) -> np.ndarray:
        c = self.config
        return np.zeros((c.num_layers, n, c.num_heads, 0, c.hidden_size // c.num_heads), dtype=np.float32)

    def _run(self, ids, types, positions, feats, boxes, past_keys, past_values, allowed):
        """The fusion graph -> keys, values (L, N, h, T + R, d) of the new positions and the last one's logits."""
        return self.session.run(None, {
            "input_ids": ids, "token_type_ids": types, "position_ids": np.ascontiguousarray(positions),
            "region_features": feats, "region_boxes": boxes, "past_keys": past_keys, "past_values": past_values,
            "allowed": np.ascontiguousarray(allowed)})

    def _start(self, rows: np.ndarray) -> None:
        c, n = self.config, len(rows)
        context = self.context_mask.shape[1]
        self.rows, self.length = rows.copy(), 0
        shape = list(self.context_keys.shape)
        shape[1], shape[3] = n, context + c.caption_slot
        self.keys, self.values = np.zeros(shape, np.float32), np.zeros(shape, np.float32)  # (L, N, h, C + S, d)
        self.keys[:, :, :, :context] = self.context_keys[:, rows]
        self.values[:, :, :, :context] = self.context_values[:, rows]
        self.past = np.zeros((n, context + c.caption_slot), dtype=bool)  # (N, C + S): which positions are real
        self.past[:, :context] = self.context_mask[rows]

    def reorder(self, index) -> None:
        index = np.asarray(index, dtype=np.int64)
        rows = self.rows[index]
        if len(rows) == len(self.rows) and np.array_equal(rows, self.rows):  # beam search: move the caption only
            start, end = self.context_mask.shape[1], self.context_mask.shape[1] + self.length
            self.keys[:, :, :, start:end] = self.keys[:, index, :, start:end]
            self.values[:, :, :, start:end] = self.values[:, index, :, start:end]
        else:  # hypotheses leave (greedy search) or change image
            self.keys, self.values = self.keys[:, index], self.values[:, index]
        self.past = self.past[index]
        self.rows = rows

    def log_probs(self, prefix: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """prefix (N, t) word ids, rows (N,) which context each belongs to -> (N, V) float32 log-probs."""
        c, (n, t) = self.config, prefix.shape
        if t == 0:
            self._start(np.asarray(rows, dtype=np.int64))
        elif t != self.length or n != len(self.rows):
            raise ValueError(f"the cache holds {len(self.rows)} hypotheses of {self.length} positions, not {n} of {t}")
        newest = prefix[:, -1] if t else np.full(n, c.cls_token_id, dtype=np.int64)
        ids = np.stack([newest, np.full(n, c.mask_token_id, dtype=np.int64)], axis=1)  # (N, 2)
        positions = np.broadcast_to(np.arange(t, t + 2, dtype=np.int64), (n, 2))
        new = np.array([[True, False], [True, True]])  # the newest word does not see the [MASK] after it
        allowed = np.concatenate([np.broadcast_to(self.past[:, None, :], (n, 2, self.past.shape[1])),
                                  np.broadcast_to(new, (n, 2, 2))], axis=-1)[:, None]  # (N, 1, 2, C + S + 2)
        keys, values, logits = self._run(ids, np.zeros_like(ids), positions,
                                         np.zeros((n, 0, c.region_feature_dim), np.float32),
                                         np.zeros((n, 0, 4), np.float32), self.keys, self.values, allowed)
        at = self.context_mask.shape[1] + t  # the newest word's slot; the [MASK]'s is the next word's
        self.keys[:, :, :, at] = keys[:, :, :, 0]
        self.values[:, :, :, at] = values[:, :, :, 0]
        self.past[:, at] = True
        self.length = t + 1
        logits = logits.astype(np.float32)
        logits[:, self.banned] = -np.inf
        if t == 0:
            logits[:, c.sep_token_id] = -np.inf  # at least one word
        return log_softmax(logits)


def load_onnx_captioner(directory: str, *, threads: int | None = None) -> OnnxCaptioner:
    """An export (local, gs://, s3://) -> OnnxCaptioner; ExportProblem (one line) when it cannot run."""
    return OnnxCaptioner(directory, threads=threads)
