"""RunInference model handlers: the teachers (labeling job) and the TEE (feature extraction).

Elements are `Work` items: one decoded image with what the models have said so far.
The captioner's handler fills `captions`, the tagger's `tags` (and, when captions are
reranked, each caption's `similarity`), the TEE's `regions`; an item that already
failed passes through untouched, so every image leaves the chain exactly once. A batch
that raises is retried one image at a time (`ImageModelHandler`, shared by all of
them): one bad image costs its own row, not its neighbours'.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from pipelines.data.sources import ImageRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    ref: ImageRef
    sha256: str
    width: int  # full resolution, after orientation
    height: int
    pixels: np.ndarray | None  # (H, W, 3) uint8 for the models; dropped once they are done
    captions: list | None = None
    tags: list | None = None
    failure: tuple[str, str, str] | None = None  # (stage, error_type, message)
    regions: Any = None  # models.tee.Regions from the TEE (feature extraction job)
    runtime: dict | None = None  # per teacher stage, what it ran on: {device, dtype, attn_implementation}

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
    threads: int | None = None  # --threads: CPU threads per model caller; None: share the cores (callers)
    # Model callers (worker processes, or runner threads in one process) sharing one machine's
    # cores: the DirectRunner's --direct_num_workers; None: one per core (Dataflow's Python workers).
    callers: int | None = 1

    def cpu_threads(self, cpus: int | None = None) -> int | None:
        """CPU threads each model caller uses (models.threads): --threads, else an even share of the
        cores where callers share them; None (torch's own setting, untouched) for a lone caller."""
        from models.threads import threads_per_caller

        if self.threads is not None:
            return self.threads
        # --large-model: one process per copy holds the model and serves every caller on the machine
        callers = self.model_copies or 1 if self.large_model else self.callers
        return None if callers == 1 else threads_per_caller(callers, cpus)


class ImageModelHandler(ModelHandler[Work, Work, Any]):
    """Runs a loaded model (a callable: list of HWC uint8 images -> one result per image)
    on batches of Work items, with per-image fallback. Subclasses load the model and say
    where its result goes (`store`); `stage` names the failures it causes."""

    stage = ""

    def __init__(self, options: HandlerOptions):
        super().__init__()
        if options.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, not {options.batch_size}")
        self.options = options

    def use_cpu_threads(self) -> int:
        """Set this process's torch threads (call from load_model: it runs where the model will)."""
        import torch

        from models.threads import use_threads

        share = self.options.cpu_threads()
        n = torch.get_num_threads() if share is None else use_threads(share)
        log.info("%s: %d CPU threads per model caller", self.stage or type(self).__name__, n)
        return n

    def store(self, work: Work, result) -> Work:
        raise NotImplementedError

    def predict(self, model, works: Sequence[Work]) -> list:
        """One model call for `works`: one result per item."""
        return model([w.pixels for w in works])

    def run_inference(self, batch: Sequence[Work], model,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[Work]:
        todo = [i for i, w in enumerate(batch) if w.failure is None]
        out = list(batch)
        if not todo:
            return out
        try:
            results = self.predict(model, [batch[i] for i in todo])
            if len(results) != len(todo):
                raise RuntimeError(f"{self.stage} model returned {len(results)} results for {len(todo)} images")
            for i, value in zip(todo, results):
                out[i] = self.store(batch[i], value)
            return out
        except Exception as batch_error:
            if len(todo) == 1:
                out[todo[0]] = self._failed(batch[todo[0]], batch_error)
                return out
            log.warning("%s batch of %d failed (%s); retrying one image at a time", self.stage, len(todo), batch_error)
        for i in todo:
            try:
                out[i] = self.store(batch[i], self.predict(model, [batch[i]])[0])
            except Exception as e:
                out[i] = self._failed(batch[i], e)
        return out

    def _failed(self, work: Work, err: BaseException) -> Work:
        return replace(work, failure=(self.stage, type(err).__name__, str(err) or repr(err)))

    def get_num_bytes(self, batch: Sequence[Work]) -> int:
        return sum(w.pixels.nbytes for w in batch if w.pixels is not None)  # the default pickles the batch

    def batch_elements_kwargs(self) -> dict:
        # Full batches from the start: Beam's adaptive batching otherwise ramps up from 1
        # (1, 1, 2, 4, 8, ...), which cost ~15% of a short job's throughput in
        # benchmarks.throughput. A bundle's last batch may still be smaller.
        b = self.options.batch_size
        return {"min_batch_size": b, "max_batch_size": b}

    def share_model_across_processes(self) -> bool:
        return self.options.large_model

    def model_copies(self) -> int:
        return self.options.model_copies or 1


class TeacherHandler(ImageModelHandler):
    """Loads one teacher (captioner or tagger) and runs it on batches of Work items.

    With `rerank` (tagger only), the tagger also scores each image's captions against
    the image, stores the score as the caption's `similarity` and puts the best first;
    an image whose every caption is below `rerank.min_similarity` fails at stage
    "rerank" rather than vanish.
    """

    def __init__(self, stage: str, spec: str, params, options: HandlerOptions, vocab=None, rerank=None,
                 dtype: str = "auto"):
        if stage not in ("caption", "tag"):
            raise ValueError(f"stage must be 'caption' or 'tag', not {stage!r}")
        if rerank is not None and stage != "tag":
            raise ValueError("captions are reranked by the tagger's handler, not the captioner's")
        super().__init__(options)
        self.stage, self.spec, self.params, self.dtype = stage, spec, params, dtype
        self.vocab = vocab  # tagger only: (label, name) pairs parsed on the launcher, if local
        self.rerank = rerank  # teachers.RerankParams | None
        self.field = "captions" if stage == "caption" else "tags"
        self._runtime: tuple[int, dict | None] | None = None  # (id of the model, its runtime())

    def load_model(self):
        from teachers import load_captioner, load_tagger

        o = self.options
        self.use_cpu_threads()
        common = dict(device=o.device, cache_dir=o.cache_dir, trust_remote_code=o.trust_remote_code, dtype=self.dtype)
        if self.stage == "caption":
            return load_captioner(self.spec, self.params, **common)
        tagger = load_tagger(self.spec, self.params, vocab=self.vocab, **common)
        if self.rerank is not None and tagger.measure != self.rerank.measure:
            # The rows would claim a measure (and a --min-caption-similarity range) they do not have.
            raise RuntimeError(f"the tagger {self.spec} scores captions by {tagger.measure} on this worker, "
                               f"by {self.rerank.measure} when the job started: it changed; rerun the job")
        return tagger

    def run_inference(self, batch: Sequence[Work], model,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[Work]:
        """As ImageModelHandler's, and each image this teacher labeled records what it ran on."""
        fresh = [w.failure is None for w in batch]
        out = list(super().run_inference(batch, model, inference_args))
        labeled = [i for i, (w, new) in enumerate(zip(out, fresh)) if new and w.failure is None]
        runtime = self._runtime_of(model) if labeled else None
        if runtime is None:
            return out
        for i in labeled:
            out[i] = replace(out[i], runtime={**(out[i].runtime or {}), self.stage: runtime})
        return out

    def _runtime_of(self, model) -> dict | None:
        """model.runtime() (device, dtype, attention), asked once per loaded model: through a
        --large-model proxy it is a call to another process. None for a model that does not
        report it (a wrapper around a teacher)."""
        if self._runtime is None or self._runtime[0] != id(model):
            report = getattr(model, "runtime", None)
            self._runtime = (id(model), report() if callable(report) else None)
        return self._runtime[1]

    def predict(self, model, works: Sequence[Work]) -> list:
        if self.rerank is None:
            return super().predict(model, works)
        return model([w.pixels for w in works], texts=[[c["text"] for c in w.captions or []] for w in works])

    def store(self, work: Work, result) -> Work:
        if self.rerank is None:
            return replace(work, **{self.field: list(result)})
        tags, similarities = result
        return self._reranked(replace(work, tags=list(tags)), similarities)

    def _reranked(self, work: Work, similarities) -> Work:
        from teachers import rerank_captions

        if not work.captions:  # nothing to rank: the row maker reports the captioner's empty output
            return work
        bound = self.rerank.min_similarity
        kept = rerank_captions(work.captions, similarities, bound)
        if kept:
            return replace(work, captions=kept)
        best = max(similarities)
        message = (f"all {len(similarities)} captions are below --min-caption-similarity {bound:g}: the best has "
                   f"{self.rerank.measure} similarity {best:.4f} to the image")
        return replace(work, failure=("rerank", "LowCaptionSimilarity", message))

    def get_metrics_namespace(self) -> str:
        return f"teacher_{self.stage}"


class TEEExtractor:
    """A loaded TEE as one callable (what a --large-model proxy can forward): images -> Regions."""

    def __init__(self, model):
        self.model = model

    def __call__(self, images: Sequence[np.ndarray]) -> list:
        return self.model.extract(list(images))


class TEEHandler(ImageModelHandler):
    """Loads the TEE (`load_tee` reference) and fills `Work.regions`.

    `extractor_id` is what the launcher computed: a worker that loads different weights
    (a directory changed since launch) stops the job rather than stamp rows wrongly.
    """

    stage = "extract"

    def __init__(self, reference: str, extractor_id: str | None, options: HandlerOptions):
        super().__init__(options)
        self.reference, self.extractor_id = reference, extractor_id

    def load_model(self) -> TEEExtractor:
        from models.tee import load_tee
        from teachers.common import pick_device

        self.use_cpu_threads()
        model, _ = load_tee(self.reference, cache_dir=self.options.cache_dir)
        if self.extractor_id is not None and model.extractor_id() != self.extractor_id:
            raise RuntimeError(f"the TEE at {self.reference} is {model.extractor_id()} on this worker, "
                               f"{self.extractor_id} when the job started: it changed; rerun the job")
        model = model.to(pick_device(self.options.device)).eval()
        model.fold_batchnorms()  # after the id check: the folded TEE keeps the id it was loaded with
        return TEEExtractor(model)

    def store(self, work: Work, result) -> Work:
        return replace(work, regions=result, pixels=None)  # the TEE is the last model: free the pixels

    def get_metrics_namespace(self) -> str:
        return "tee_extract"
