"""The captioning teacher: any image-to-text model transformers loads natively.

`Captioner` is one callable (processor + generate + decode under inference mode), so a
Beam RunInference handler can share it across processes through a proxy that only
forwards calls.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from teachers.common import pick_device, pick_dtype
from teachers.loading import TeacherRef, load_pretrained

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"


@dataclass(frozen=True)
class CaptionParams:
    num_captions: int = 3
    num_beams: int = 5
    max_new_tokens: int = 30
    prompt: str | None = None  # conditional captioning / task prompt (e.g. Florence-2)

    def __post_init__(self):
        if self.num_captions < 1:
            raise ValueError(f"--num-captions must be >= 1, not {self.num_captions}")
        if self.num_beams < 1:
            raise ValueError(f"--num-beams must be >= 1, not {self.num_beams}")
        if self.num_captions > self.num_beams:
            raise ValueError(
                f"--num-captions ({self.num_captions}) cannot exceed --num-beams ({self.num_beams}): "
                "beam search returns at most one caption per beam"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, not {self.max_new_tokens}")

    def to_dict(self) -> dict:
        return asdict(self)


class Captioner:
    def __init__(self, model, processor, params: CaptionParams, device: str):
        self.model, self.processor, self.params, self.device = model, processor, params, device

    def __call__(self, images: list[np.ndarray]) -> list[list[dict]]:
        """images: list of (H, W, 3) uint8 -> per image, captions best first: {text, score}."""
        import torch

        p = self.params
        kwargs = {"images": list(images), "return_tensors": "pt"}
        if p.prompt:
            kwargs["text"] = [p.prompt] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                num_beams=p.num_beams,
                num_return_sequences=p.num_captions,
                max_new_tokens=p.max_new_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
            scores = self._sequence_scores(out)  # (B * num_captions,)
        texts = self.processor.batch_decode(out.sequences, skip_special_tokens=True)
        results = []
        for i in range(len(images)):
            best: dict[str, float] = {}
            for j in range(i * p.num_captions, (i + 1) * p.num_captions):
                text = " ".join(texts[j].split())
                if text and (text not in best or scores[j] > best[text]):
                    best[text] = scores[j]  # beams that decode to the same words count once
            results.append([{"text": t, "score": s} for t, s in sorted(best.items(), key=lambda kv: -kv[1])])
        return results

    def _sequence_scores(self, out) -> list[float]:
        """Length-normalised log-probability per returned sequence."""
        import torch

        if getattr(out, "sequences_scores", None) is not None:
            return out.sequences_scores.float().tolist()
        # Greedy search reports per-step scores only: average the chosen tokens' log-probs.
        steps = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        steps = steps.float()  # (N, T)
        finite = torch.isfinite(steps) & (steps != 0)
        return (torch.where(finite, steps, 0).sum(1) / finite.sum(1).clamp(min=1)).tolist()


def load_captioner(spec: str, params: CaptionParams, *, device: str = "auto", cache_dir: str | None = None,
                   trust_remote_code: bool = False) -> Captioner:
    from transformers import AutoModelForImageTextToText

    dev = pick_device(device)
    model, processor = load_pretrained(TeacherRef("captioner", spec), AutoModelForImageTextToText,
                                       cache_dir=cache_dir, trust_remote_code=trust_remote_code,
                                       device=dev, dtype=pick_dtype(dev))
    return Captioner(model, processor, params, dev)
