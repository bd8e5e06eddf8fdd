"""The captioning teacher: any image-to-text model transformers loads natively.

`Captioner` is one callable (processor + generate + decode under inference mode), so a
Beam RunInference handler can share it across processes through a proxy that only
forwards calls.

Families differ in how they are prompted, and the caption is always only what the
model generated after its prompt:

- captioners (BLIP, BLIP-2, GIT): no prompt, or a text the caption continues
  ("a photo of"); the prompt is not part of the caption;
- Florence-2: a task token (<CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>)
  its processor turns into an instruction; <CAPTION> when none is given;
- chat VLMs (SmolVLM, Qwen2-VL, ...): an instruction ("Describe this image in one
  sentence.") put through the processor's chat template with the image; required.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from teachers.common import check_teacher_dtype, dtype_name, pick_device, pick_dtype, use_sdpa
from teachers.loading import TeacherRef, load_pretrained, model_config

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"
# config.json model_type of the chat VLMs: prompted through their chat template.
CHAT_FAMILIES = frozenset({"idefics2", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava",
                           "llava_next", "llava_onevision", "gemma3", "mllama"})
# Families that take a task prompt and have a captioning one.
DEFAULT_PROMPTS = {"florence2": "<CAPTION>"}
# Families whose processor closes a text prompt with the token their captions end with
# (GIT: [SEP]); to be continued, the prompt goes in without it, as GIT's own examples do.
CLOSED_PROMPTS = frozenset({"git"})
# Hub repos whose model code is their own, and the native port of the same weights.
REMOTE_CODE_PORTS = {"microsoft/florence-2-": "florence-community/Florence-2-"}


@dataclass(frozen=True)
class CaptionParams:
    num_captions: int = 3
    num_beams: int = 5
    max_new_tokens: int = 30
    prompt: str | None = None  # continued text, task token (Florence-2) or chat instruction (chat VLMs)

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


def family_prompt(model_type: str, prompt: str | None) -> str | None:
    """The prompt a `model_type` captions with: `prompt`, else the family's default;
    a chat VLM without one is a ValueError (it would answer nothing in particular)."""
    if prompt:
        return prompt
    if model_type in CHAT_FAMILIES:
        raise ValueError(f"the captioner is a chat model ({model_type}): it needs an instruction, e.g. "
                         f"--prompt 'Describe this image in one sentence.'")
    return DEFAULT_PROMPTS.get(model_type)


def check_remote_code(spec: str, trust_remote_code: bool) -> None:
    """Refuse a hub repo that needs its own model code when a native port exists (one-line ValueError)."""
    ref = TeacherRef("captioner", spec)
    if trust_remote_code or ref.tiny or ref.is_remote_dir or ref.is_local_dir:
        return
    repo = ref.hub[0]
    for prefix, port in REMOTE_CODE_PORTS.items():
        if repo.lower().startswith(prefix):
            native = port + repo[len(prefix):]
            raise ValueError(f"{repo} runs its own model code (only with --trust-remote-code); use {native}, "
                             f"the same model that transformers runs natively")


def caption_params_for(spec: str, params: CaptionParams, *, cache_dir: str | None = None,
                       trust_remote_code: bool = False) -> CaptionParams:
    """`params` as the captioner `spec` will run them (its default prompt filled in), from
    its config.json alone; ValueError for a reference or prompt it cannot run with."""
    check_remote_code(spec, trust_remote_code)
    model_type = str(model_config(TeacherRef("captioner", spec), cache_dir=cache_dir).get("model_type", ""))
    return replace(params, prompt=family_prompt(model_type, params.prompt))


class Captioner:
    def __init__(self, model, processor, params: CaptionParams, device: str, attention: str | dict | None = None,
                 dtype=None):
        self.model, self.processor, self.device = model, processor, device
        # The dtype it was loaded in: model.dtype is its first weight's, and some families
        # keep a part in float32 under float16 (BLIP-2's Q-Former).
        self.dtype = dtype if dtype is not None else model.dtype
        config = model.config
        self.chat = config.model_type in CHAT_FAMILIES
        self.params = replace(params, prompt=family_prompt(config.model_type, params.prompt))
        self.attention = attention if attention is not None else config._attn_implementation
        if not config.is_encoder_decoder:
            # Decoder-only models continue the prompt: pad on the left so every row's
            # prompt ends where generation starts (chat prompts differ in image tokens).
            self.processor.tokenizer.padding_side = "left"
        self.text = self._prompt_text()

    def _prompt_text(self) -> str | None:
        prompt = self.params.prompt
        if not self.chat or prompt is None:
            return prompt
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def runtime(self) -> dict:
        """What this captioner runs on (a method, so a --large-model proxy forwards it)."""
        return {"device": self.device, "dtype": dtype_name(self.dtype), "attn_implementation": self.attention}

    def inputs(self, images: list[np.ndarray]):
        """The processor's model inputs for a batch of images, on the model's device and dtype."""
        kwargs = {"return_tensors": "pt"}
        if self.chat:
            kwargs.update(images=[[im] for im in images], text=[self.text] * len(images), padding=True)
        else:
            kwargs["images"] = list(images)
            if self.text is not None:
                kwargs["text"] = [self.text] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        if self.text is not None and self.model.config.model_type in CLOSED_PROMPTS:
            closing = self.processor.tokenizer.sep_token_id
            if (inputs["input_ids"][:, -1] == closing).all():
                for key in ("input_ids", "attention_mask"):
                    inputs[key] = inputs[key][:, :-1]
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def generate(self, inputs):
        import torch

        p = self.params
        with torch.inference_mode():
            return self.model.generate(**inputs, num_beams=p.num_beams, num_return_sequences=p.num_captions,
                                       max_new_tokens=p.max_new_tokens, do_sample=False, output_scores=True,
                                       return_dict_in_generate=True)

    @staticmethod
    def generated_tokens(out):
        """The tokens each returned sequence generated, without what came before them.

        Decoder-only families return their prompt (and image placeholders) followed by
        the new tokens; encoder-decoders their start token. Either way the new tokens
        are the last ones: as many as generation steps (greedy), or as the longest
        returned beam took (beam search, from its beam indices).
        """
        beam_indices = getattr(out, "beam_indices", None)
        steps = int((beam_indices >= 0).sum(-1).max()) if beam_indices is not None else len(out.scores)
        return out.sequences[:, out.sequences.shape[1] - steps:]

    def __call__(self, images: list[np.ndarray]) -> list[list[dict]]:
        """images: list of (H, W, 3) uint8 -> per image, captions best first: {text, score}."""
        p = self.params
        out = self.generate(self.inputs(images))
        scores = self._sequence_scores(out)  # (B * num_captions,)
        texts = self.processor.batch_decode(self.generated_tokens(out), skip_special_tokens=True)
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


def _auto_class(ref: TeacherRef, cache_dir: str | None, trust_remote_code: bool):
    """AutoModelForImageTextToText, or the class a remote-code repo registers instead
    (microsoft/Florence-2-* registers only AutoModelForCausalLM)."""
    import transformers

    if trust_remote_code:
        auto_map = model_config(ref, cache_dir=cache_dir).get("auto_map") or {}
        if "AutoModelForImageTextToText" not in auto_map and "AutoModelForCausalLM" in auto_map:
            return transformers.AutoModelForCausalLM
    return transformers.AutoModelForImageTextToText


def load_captioner(spec: str, params: CaptionParams, *, device: str = "auto", cache_dir: str | None = None,
                   trust_remote_code: bool = False, dtype: str = "auto") -> Captioner:
    """dtype: auto | float32 | bfloat16 | float16 (teachers.common.pick_dtype)."""
    check_remote_code(spec, trust_remote_code)
    ref = TeacherRef("captioner", spec)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    check_teacher_dtype(ref, dev, dtype, cache_dir)
    model, processor = load_pretrained(ref, _auto_class(ref, cache_dir, trust_remote_code), cache_dir=cache_dir,
                                       trust_remote_code=trust_remote_code, device=dev, dtype=torch_dtype)
    return Captioner(model, processor, params, dev, attention=use_sdpa(model), dtype=torch_dtype)
