"""The tiny blip2 captioner: a replica of Salesforce/blip2-opt-2.7b.

Real: Blip2ForConditionalGeneration (EVA ViT-g 224px / patch 14 -> 32-query Q-Former ->
OPT-2.7b), Blip2Processor (BlipImageProcessor 224x224, bicubic, CLIP mean/std;
num_query_tokens 32), OPT's GPT2Tokenizer: byte-level BPE, 50265 pieces with <s>=0,
<pad>=1, </s>=2, <unk>=3 (OPT uses </s> as bos, eos and unk), plus the added <image>
token 50265 that the processor repeats 32 times in front of the text. OPT's embedding
has 50272 rows; generation stops at "\\n" (id 50118), as in the original BLIP-2.
"""
from __future__ import annotations

from teachers.registry import register_tiny
from teachers.replicas.common import (
    CLIP_MEAN,
    CLIP_STD,
    byte_level_bpe,
    save_repo_layout,
    seeded,
)

REPO = "Salesforce/blip2-opt-2.7b"
OPT_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
OPT_PIECES = 50265  # vocab.json
OPT_NEWLINE = ("\u010a", 50118)  # byte-level "\n": OPT's id, BLIP-2's end of caption
OPT_EMBEDDINGS = 50272  # OPT pads its embedding matrix to a multiple of 8
BLIP2_IMAGE_TOKEN = 50265
NUM_QUERY_TOKENS = 32


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
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GenerationConfig,
    )

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
