"""The tiny blip2 captioner: a replica of Salesforce/blip2-opt-2.7b.

Real: Blip2ForConditionalGeneration (EVA ViT-g 224px / patch 14 -> 32-query Q-Former ->
OPT-2.7b), Blip2Processor (BlipImageProcessor 224x224, bicubic, CLIP mean/std;
num_query_tokens 32), OPT's GPT2Tokenizer: byte-level BPE, 50265 pieces with <s>=0,
<pad>=1, </s>=2, <unk>=3 (OPT uses </s> as bos, eos and unk), plus the added <image>
token 50265 that the processor repeats 32 times in front of the text. OPT's embedding
has 50272 rows; generation stops at "\\n" (id 50118), as in the original BLIP-2.

The byte-level BPE builder below is shared with the florence2 and smolvlm replicas
(BART and SmolLM2 tokenizers are byte-level BPE too): the real vocabularies are not
shipped in any package, so their pieces are generated, while the special tokens, their
ids and the vocabulary size are the real ones.
"""
from __future__ import annotations

import itertools
import json
import os
import string
import tempfile

from teachers.registry import register_tiny
from teachers.replicas.common import seeded, write_json

REPO = "Salesforce/blip2-opt-2.7b"
OPT_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
OPT_PIECES = 50265  # vocab.json
OPT_NEWLINE = ("\u010a", 50118)  # byte-level "\n": OPT's id, BLIP-2's end of caption
OPT_EMBEDDINGS = 50272  # OPT pads its embedding matrix to a multiple of 8
BLIP2_IMAGE_TOKEN = 50265
NUM_QUERY_TOKENS = 32
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def bpe_pieces(prefix: str, count: int) -> tuple[list[str], list[tuple[str, str]]]:
    """`count` merged pieces over lowercase letters, breadth-first: prefix+word and bare
    words of growing length, each merged from its one-shorter head and last letter (so
    every merge's parts exist before it). Random models need a vocabulary of the real
    size and shape, not real statistics."""
    pieces, merges = [], []
    for length in itertools.count(1):
        for word in itertools.product(string.ascii_lowercase, repeat=length):
            for piece in (prefix + "".join(word), "".join(word)):
                if len(piece) < 2:
                    continue
                pieces.append(piece)
                merges.append((piece[:-1], piece[-1]))
                if len(pieces) == count:
                    return pieces, merges


def assign_ids(tokens: list[str], pinned: dict[str, int], size: int) -> dict[str, int]:
    """`tokens` numbered in order around the `pinned` ones, `size` ids in all (0..size-1)."""
    taken = set(pinned.values())
    free = (i for i in range(size) if i not in taken)
    vocab = dict(pinned)
    for token in tokens:
        if token not in vocab:
            vocab[token] = next(free)
    if len(vocab) != size or max(vocab.values()) != size - 1:
        raise ValueError(f"built {len(vocab)} ids, expected {size}")
    return vocab


def byte_level_bpe(specials: dict[str, int], size: int, pinned: dict[str, int] | None = None):
    """(vocab, merges) of a GPT-2 style byte-level BPE with `size` entries: the real
    special tokens at their ids, the 256 byte symbols, then generated merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    base = sorted(ByteLevel.alphabet())
    pinned = {**specials, **(pinned or {})}
    n_pieces = size - len(set(pinned) | set(base))
    pieces, merges = bpe_pieces("\u0120", n_pieces)  # "Ġ": a byte-level space, the start of a word
    return assign_ids([*base, *pieces], pinned, size), merges


def reload_with(tok, **named):
    """`tok` saved and loaded back with `named` special tokens (eos_token=..., image_token=...).

    A token named at construction is added at once, ahead of the model's other added
    tokens; naming it on reload, once it has its real id, keeps every id where it belongs."""
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return type(tok).from_pretrained(tmp, **named)


def save_repo_layout(out_dir: str, model, processor, processor_args: dict | None = None,
                     chat_template: str | None = None) -> None:
    """Write the files the way these hub repos hold them, so loading takes their path: the image
    processor's preprocessor_config.json, the tokenizer's files, processor_config.json with the
    processor's own arguments (if it takes any), chat_template.json (chat VLMs), config.json,
    generation_config.json and model.safetensors."""
    processor_class = type(processor).__name__
    processor.image_processor.save_pretrained(out_dir)
    processor.tokenizer.save_pretrained(out_dir)
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        write_json(out_dir, name, {**_read_json(out_dir, name), "processor_class": processor_class})
    if processor_args:
        write_json(out_dir, "processor_config.json", {**processor_args, "processor_class": processor_class})
    if chat_template is not None:
        write_json(out_dir, "chat_template.json", {"chat_template": chat_template})
    model.save_pretrained(out_dir)


def _read_json(out_dir: str, name: str) -> dict:
    with open(os.path.join(out_dir, name), encoding="utf-8") as f:
        return json.load(f)


def opt_tokenizer():
    """OPT's tokenizer (GPT2Tokenizer, </s> prepended as bos) with BLIP-2's <image> token."""
    from transformers import AddedToken, GPT2Tokenizer

    vocab, merges = byte_level_bpe(OPT_SPECIALS, OPT_PIECES, pinned=dict([OPT_NEWLINE]))
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>", unk_token="</s>",
                        pad_token="<pad>", add_bos_token=True, model_max_length=2048)
    tok.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    if tok.convert_tokens_to_ids("<image>") != BLIP2_IMAGE_TOKEN:
        raise ValueError("the <image> token must follow OPT's vocabulary")
    return tok


def _opt_text(tok) -> dict:
    return dict(model_type="opt", vocab_size=OPT_EMBEDDINGS, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=2048,
                bos_token_id=tok.bos_token_id, eos_token_id=OPT_NEWLINE[1], pad_token_id=tok.pad_token_id)


@register_tiny("captioner", "blip2", repo=REPO)
def _tiny_blip2(out_dir: str) -> None:
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor,
                              GenerationConfig)

    tok = opt_tokenizer()
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
                  patch_size=14)
    qformer = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   encoder_hidden_size=32, vocab_size=30522)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=_opt_text(tok),
                         num_query_tokens=NUM_QUERY_TOKENS, image_token_index=BLIP2_IMAGE_TOKEN)
    with seeded():
        model = Blip2ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=OPT_NEWLINE[1],
                                               pad_token_id=tok.pad_token_id)
    images = BlipImageProcessor(size={"height": 224, "width": 224}, resample=3, image_mean=CLIP_MEAN,
                                image_std=CLIP_STD, do_convert_rgb=True)
    save_repo_layout(out_dir, model, Blip2Processor(image_processor=images, tokenizer=tok),
                     processor_args={"num_query_tokens": NUM_QUERY_TOKENS})
