"""The tiny clip tagger: a replica of openai/clip-vit-large-patch14.

Real: CLIPModel; the repo predates processor configs, so its preprocessor_config.json is a legacy
CLIPFeatureExtractor one (integer size/crop_size 224, CLIP mean/std, bicubic) and its
tokenizer_config.json names no processor: CLIPProcessor comes from the model type. CLIPTokenizer
is byte-level BPE (vocab.json, merges.txt, tokenizer.json): 49,408 ids, <|startoftext|> 49406,
<|endoftext|> 49407 (also pad and unk), 77 positions. The replica's BPE learns a few hundred merges
here, laid out as CLIP's vocab.json, with the special tokens at their real ids. The text config
keeps the repo's legacy ids (bos 0, pad 1, eos 2), which make CLIP pool at the highest token id,
<|endoftext|>. Sources: docs/teachers.md.
"""
from __future__ import annotations

import json
import os

from teachers.registry import register_tiny
from teachers.replicas.common import (
    BICUBIC,
    CLIP_MEAN,
    CLIP_STD,
    clip_bpe,
    keep_only,
    replica_corpus,
    save_model,
    seeded,
    shrunk,
    write_json,
)

REPO = "openai/clip-vit-large-patch14"
# The repo's files that loading reads (weights only as safetensors).
FILES = ("config.json", "merges.txt", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
         "tokenizer.json", "tokenizer_config.json", "vocab.json")
IMAGE_SIZE, PATCH_SIZE = 224, 14
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPECIAL_IDS = {BOS: 49406, EOS: 49407}
TEXT = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}

PREPROCESSOR = {
    "crop_size": IMAGE_SIZE,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "resample": BICUBIC,
    "size": IMAGE_SIZE,
}


def _added(content: str, typed: bool) -> dict:
    token = {"content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": True}
    return {**token, "__type": "AddedToken"} if typed else token


TOKENIZER_CONFIG = {
    "unk_token": _added(EOS, True),
    "bos_token": _added(BOS, True),
    "eos_token": _added(EOS, True),
    "pad_token": EOS,
    "add_prefix_space": False,
    "errors": "replace",
    "do_lower_case": True,
    "name_or_path": "openai/clip-vit-base-patch32",
    "model_max_length": 77,
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
}
SPECIAL_TOKENS_MAP = {"bos_token": _added(BOS, False), "eos_token": _added(EOS, False),
                      "unk_token": _added(EOS, False), "pad_token": EOS}


def _write_bpe(out_dir: str) -> None:
    """vocab.json, merges.txt and the tokenizer.json CLIPTokenizer builds from them."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe(replica_corpus(), merges=2000)
    vocab.update(SPECIAL_IDS)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    CLIPTokenizer(vocab=vocab, merges=merges).backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"))


@register_tiny("tagger", "clip", repo=REPO)
def _tiny_clip(out_dir: str) -> None:
    from transformers import CLIPConfig, CLIPModel

    vision = shrunk({"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE})
    with seeded():
        # projection_dim is a width (768 in the repo): shrunk too.
        model = CLIPModel(CLIPConfig(text_config=shrunk(TEXT), vision_config=vision, projection_dim=32))
    save_model(out_dir, model)
    _write_bpe(out_dir)
    write_json(out_dir, "preprocessor_config.json", PREPROCESSOR)
    write_json(out_dir, "tokenizer_config.json", TOKENIZER_CONFIG)
    # The repo's special_tokens_map.json is one line.
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(SPECIAL_TOKENS_MAP, f)
    keep_only(out_dir, FILES)
