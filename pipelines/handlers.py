"""RunInference model handlers for the teachers.

Elements are `Work` items: one decoded image with what the teachers have said so far.
The captioner's handler fills `captions`, the tagger's fills `tags`; an item that
already failed passes through untouched, so every image leaves the chain exactly once.
A batch that raises is retried one image at a time: one bad image costs its own row,
not its neighbours'.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from pipelines.sources import ImageRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    ref: ImageRef
    sha256: str
    width: int  # full resolution, after orientation
    height: int
    pixels: np.ndarray | None  # (H, W, 3) uint8 for the teachers; dropped once they are done
    captions: list | None = None
    tags: list | None = None
    failure: tuple[str, str, str] | None = None  # (stage, error_type, message)

    @property
    def image_id(self) -> str:
        return self.ref.image_id


@dataclass(frozen=True)
class HandlerOptions:
    batch_size: int = 8
    device: str = "auto"
    cache_dir: str | None = None
    trust_remote_code: bool = False
    large_model: bool = False  # one copy per worker VM, shared by its processes (GPU workers)
    model_copies: int | None = None  # with large_model: copies per VM (e.g. one per GPU)


class TeacherHandler(ModelHandler[Work, Work, Any]):
    """Loads one teacher (captioner or tagger) and runs it on batches of Work items."""

    def __init__(self, stage: str, spec: str, params, options: HandlerOptions, vocab=None):
        super().__init__()
        if stage not in ("caption", "tag"):
            raise ValueError(f"stage must be 'caption' or 'tag', not {stage!r}")
        if options.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, not {options.batch_size}")
        self.stage, self.spec, self.params, self.options = stage, spec, params, options
        self.vocab = vocab  # tagger only: (label, name) pairs parsed on the launcher, if local
        self.field = "captions" if stage == "caption" else "tags"

    def load_model(self):
        from teachers import load_captioner, load_tagger

        o = self.options
        common = dict(device=o.device, cache_dir=o.cache_dir, trust_remote_code=o.trust_remote_code)
        if self.stage == "caption":
            return load_captioner(self.spec, self.params, **common)
        return load_tagger(self.spec, self.params, vocab=self.vocab, **common)

    def run_inference(self, batch: Sequence[Work], model,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[Work]:
        todo = [i for i, w in enumerate(batch) if w.failure is None]
        out = list(batch)
        if not todo:
            return out
        try:
            results = model([batch[i].pixels for i in todo])
            if len(results) != len(todo):
                raise RuntimeError(f"teacher returned {len(results)} results for {len(todo)} images")
            for i, value in zip(todo, results):
                out[i] = replace(batch[i], **{self.field: list(value)})
            return out
        except Exception as batch_error:
            if len(todo) == 1:
                out[todo[0]] = self._failed(batch[todo[0]], batch_error)
                return out
            log.warning("%s batch of %d failed (%s); retrying one image at a time", self.stage, len(todo), batch_error)
        for i in todo:
            try:
                out[i] = replace(batch[i], **{self.field: list(model([batch[i].pixels])[0])})
            except Exception as e:
                out[i] = self._failed(batch[i], e)
        return out

    def _failed(self, work: Work, err: BaseException) -> Work:
        return replace(work, failure=(self.stage, type(err).__name__, str(err) or repr(err)))

    def get_num_bytes(self, batch: Sequence[Work]) -> int:
        return sum(w.pixels.nbytes for w in batch if w.pixels is not None)  # the default pickles the batch

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": self.options.batch_size}

    def share_model_across_processes(self) -> bool:
        return self.options.large_model

    def model_copies(self) -> int:
        return self.options.model_copies or 1

    def get_metrics_namespace(self) -> str:
        return f"teacher_{self.stage}"
