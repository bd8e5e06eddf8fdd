"""The tiny SigLIP 2 taggers: replicas of google/siglip2-so400m-patch14-384 (siglip2) and
google/siglip2-base-patch16-naflex (siglip2-naflex).

SigLIP 2 comes in two kinds of checkpoint. The fixed-resolution ones, the
so400m-patch14-384 this project recommends among them, are published as model_type
"siglip": SiglipModel + SiglipProcessor (SiglipImageProcessor 384x384, mean = std = 0.5)
with a Gemma tokenizer. The NaFlex ones are model_type "siglip2": Siglip2Model +
Siglip2Processor (Siglip2ImageProcessor: patches of 16 at the native aspect ratio, at
most 256 of them, with their attention mask and spatial shapes).

Both share the text side: Gemma's tokenizer (a 256000-piece BPE with byte fallback:
<pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4, <2mass>=5, [@BOS@]=6, <unused0..98>=7..105,
<start_of_turn>=106, <end_of_turn>=107, newline and space runs, HTML tags up to 216,
bytes <0x00>..<0xFF> = 217..472), configured as SigLIP 2 was trained: no <bos>, an
<eos> appended, padded on the right with <pad> to 64 tokens (the text tower has 64
positions and pools the last one), on lowercased text. The fixed-resolution repos ship
the plain GemmaTokenizer, which does not lowercase: the tagger does (teachers/tagger.py).
Here the 256000 pieces are generated, the special tokens and their ids are the real ones.
"""
from __future__ import annotations

import string

from teachers.registry import register_tiny
from teachers.replicas.common import assign_ids, bpe_pieces, save_repo_layout, seeded

REPO = "google/siglip2-so400m-patch14-384"
NAFLEX_REPO = "google/siglip2-base-patch16-naflex"
GEMMA_VOCAB = 256000
TEXT_LENGTH = 64
CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<2mass>", "[@BOS@]"]
HTML = [f"<{t}>" for t in ("table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td")]
HTML += [f"</{t[1:]}" for t in HTML]
HTML += [f"<{t}>" for t in ("h1", "h2", "h3", "h4", "h5", "h6", "blockquote")]
HTML += [f"</{t}>" for t in ("h1", "h2", "h3", "h4", "h5", "h6", "blockquote")]
HTML += [f"<{t}>" for t in ("strong", "em", "b", "i", "u", "s", "sub", "sup", "code")]
HTML += [f"</{t}>" for t in ("strong", "em", "b", "i", "u", "s", "sub", "sup", "code")]
USER_DEFINED = ([f"<unused{i}>" for i in range(99)] + ["<start_of_turn>", "<end_of_turn>"]
                + ["\n" * n for n in range(1, 32)] + ["\u2581" * n for n in range(2, 32)] + HTML)
BYTES = [f"<0x{b:02X}>" for b in range(256)]
CHARS = ["\u2581", *string.ascii_lowercase, *string.ascii_uppercase, *string.digits, *string.punctuation]


def gemma_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    specials = CONTROL + USER_DEFINED + BYTES
    if len(specials) != 473:  # Gemma's first ordinary piece has id 473
        raise ValueError(f"{len(specials)} special pieces, Gemma has 473")
    pieces, merges = bpe_pieces("\u2581", GEMMA_VOCAB - len(specials) - len(CHARS))
    vocab = assign_ids([*specials, *CHARS, *pieces], {}, GEMMA_VOCAB)
    return vocab, merges


def siglip2_tokenizer():
    """Gemma's tokenizer as SigLIP 2 uses it (see the module docstring)."""
    from transformers import AddedToken, GemmaTokenizer

    vocab, merges = gemma_vocab()
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True, padding_side="right",
                         model_max_length=TEXT_LENGTH, model_input_names=["input_ids"])
    # Gemma's control and user-defined pieces are never split into characters.
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in CONTROL[5:] + USER_DEFINED[:101]])
    return tok


def _towers(tok) -> tuple[dict, dict]:
    # Real so400m: width 1152, 27 layers, 16 heads, MLP 4304 (base: 768, 12, 12, 3072).
    # Text and image embeddings are compared directly, so both towers keep one width.
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    text = dict(small, vocab_size=GEMMA_VOCAB, max_position_embeddings=TEXT_LENGTH, projection_size=16,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return text, small


def _zero_bias(model):
    import torch

    with torch.no_grad():
        # Real SigLIP learns bias ~ -10; at random init that would put every tag at ~0.
        model.logit_bias.zero_()
    return model


@register_tiny("tagger", "siglip2", repo=REPO)
def _tiny_siglip2(out_dir: str) -> None:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tok = siglip2_tokenizer()
    text, vision = _towers(tok)
    with seeded():
        model = _zero_bias(SiglipModel(SiglipConfig(text_config=text, vision_config=dict(vision, image_size=384,
                                                                                          patch_size=14))))
    images = SiglipImageProcessor(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    save_repo_layout(out_dir, model, SiglipProcessor(image_processor=images, tokenizer=tok))


@register_tiny("tagger", "siglip2-naflex", repo=NAFLEX_REPO)
def _tiny_siglip2_naflex(out_dir: str) -> None:
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    tok = siglip2_tokenizer()
    text, vision = _towers(tok)
    with seeded():
        model = _zero_bias(Siglip2Model(Siglip2Config(text_config=text, vision_config=dict(vision, num_patches=256,
                                                                                            patch_size=16))))
    images = Siglip2ImageProcessor(patch_size=16, max_num_patches=256, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    save_repo_layout(out_dir, model, Siglip2Processor(image_processor=images, tokenizer=tok))
