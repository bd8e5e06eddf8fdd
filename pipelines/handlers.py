"""RunInference model handlers for the teachers.

Elements are (image_id, pixels) pairs; results are TeacherResult, one per element, so a
failure stays tied to its image. A batch that raises is retried one image at a time:
one bad image costs its own row, not its 31 neighbours'.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

log = logging.getLogger(__name__)


@dataclass
class TeacherResult:
    image_id: str
    stage: str  # caption | tag
    value: list = field(default_factory=list)
    error_type: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None


@dataclass(frozen=True)
class HandlerOptions:
    batch_size: int = 8
    device: str = "auto"
    cache_dir: str | None = None
    trust_remote_code: bool = False
    large_model: bool = False  # one copy per worker VM, shared by its processes (GPU workers)
    model_copies: int | None = None  # with large_model: copies per VM (e.g. one per GPU)


class TeacherHandler(ModelHandler[tuple[str, np.ndarray], TeacherResult, Any]):
    """Loads one teacher (captioner or tagger) and runs it on batches of images."""

    def __init__(self, stage: str, spec: str, params, options: HandlerOptions, vocab=None):
        super().__init__()
        if stage not in ("caption", "tag"):
            raise ValueError(f"stage must be 'caption' or 'tag', not {stage!r}")
        if options.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, not {options.batch_size}")
        self.stage, self.spec, self.params, self.options = stage, spec, params, options
        self.vocab = vocab  # tagger only: (label, name) pairs parsed on the launcher, if local

    def load_model(self):
        from teachers import load_captioner, load_tagger

        o = self.options
        common = dict(device=o.device, cache_dir=o.cache_dir, trust_remote_code=o.trust_remote_code)
        if self.stage == "caption":
            return load_captioner(self.spec, self.params, **common)
        return load_tagger(self.spec, self.params, vocab=self.vocab, **common)

    def run_inference(self, batch: Sequence[tuple[str, np.ndarray]], model,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[TeacherResult]:
        ids = [image_id for image_id, _ in batch]
        try:
            outputs = model([pixels for _, pixels in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"teacher returned {len(outputs)} results for {len(batch)} images")
            return [TeacherResult(i, self.stage, list(out)) for i, out in zip(ids, outputs)]
        except Exception as batch_error:
            if len(batch) == 1:
                return [self._failed(ids[0], batch_error)]
            log.warning("%s batch of %d failed (%s); retrying one image at a time", self.stage, len(batch), batch_error)
        results = []
        for image_id, pixels in batch:
            try:
                results.append(TeacherResult(image_id, self.stage, list(model([pixels])[0])))
            except Exception as e:
                results.append(self._failed(image_id, e))
        return results

    def _failed(self, image_id: str, err: BaseException) -> TeacherResult:
        return TeacherResult(image_id, self.stage, error_type=type(err).__name__, message=str(err) or repr(err))

    def get_num_bytes(self, batch: Sequence[tuple[str, np.ndarray]]) -> int:
        return sum(pixels.nbytes for _, pixels in batch)  # the default pickles the whole batch

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": self.options.batch_size}

    def share_model_across_processes(self) -> bool:
        return self.options.large_model

    def model_copies(self) -> int:
        return self.options.model_copies or 1

    def get_metrics_namespace(self) -> str:
        return f"teacher_{self.stage}"
