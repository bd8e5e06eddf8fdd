"""The tiny florence2 captioner: a replica of florence-community/Florence-2-base.

Real (transformers' native port of microsoft/Florence-2-base, no remote code):
Florence2ForConditionalGeneration (DaViT vision tower, 4 stages with strides 4-2-2-2,
window 12 -> image projection -> BART encoder-decoder), Florence2Processor with a
CLIPImageProcessor at 768x768 (no crop, bicubic, ImageNet mean/std; 577 image tokens:
24x24 spatial + 1 pooled) and BART's tokenizer (byte-level BPE, 50265 pieces, <s>=0,
<pad>=1, </s>=2, <unk>=3, <mask>=50264) plus Florence-2's 1024 added tokens (task and
region markers, <loc_0>..<loc_999>: ids 50265..51288) and the port's <image> token
51289; the embeddings are padded to 51328 rows. The processor turns task tokens such as
<CAPTION> into instructions ("What does the image describe?").
"""
from __future__ import annotations

from teachers.registry import register_tiny
from teachers.replicas.common import byte_level_bpe, reload_with, save_repo_layout, seeded

REPO = "florence-community/Florence-2-base"
BART_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 50264}
BART_PIECES = 50265
# Added by Florence-2's processor, in this order (the typo in "desciption" is Florence-2's).
FLORENCE_TOKENS = (
    ["<od>", "</od>", "<ocr>", "</ocr>"]
    + [f"<loc_{i}>" for i in range(1000)]
    + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>", "<seg>", "</seg>",
       "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>", "</region_to_desciption>", "<proposal>",
       "</proposal>", "<poly>", "</poly>", "<and>"]
)
IMAGE_TOKEN_ID = 51289
EMBEDDINGS = 51328  # len(tokenizer) = 51290, padded to a multiple of 64 by the port
IMAGE_SIZE = 768
IMAGE_SEQ_LENGTH = 577
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def florence_tokenizer():
    from transformers import AddedToken, BartTokenizer

    vocab, merges = byte_level_bpe(BART_SPECIALS, BART_PIECES)
    tok = BartTokenizer(vocab=vocab, merges=merges, model_max_length=1024)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in FLORENCE_TOKENS], special_tokens=True)
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok = reload_with(tok, image_token="<image>")  # the processor finds it by name: tokenizer.image_token
    if tok.image_token_id != IMAGE_TOKEN_ID or len(tok) != IMAGE_TOKEN_ID + 1:
        raise ValueError(f"<image> is {tok.image_token_id}, Florence-2 has it at {IMAGE_TOKEN_ID}")
    return tok


def _vision() -> dict:
    # Real base: embed_dim (128, 256, 512, 1024), heads = groups = (4, 8, 16, 32),
    # depths (1, 1, 9, 1), projection_dim 768 (= BART's d_model). Strides, kernels,
    # window and the position-embedding tables stay as they are: they fix the 24x24 grid.
    return dict(embed_dim=[8, 16, 32, 64], num_heads=[1, 2, 2, 4], num_groups=[1, 2, 2, 4], depths=[1, 1, 1, 1],
                projection_dim=32, window_size=12, drop_path_rate=0.0)


def _bart(tok) -> dict:
    return dict(model_type="bart", vocab_size=EMBEDDINGS, d_model=32, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.eos_token_id,
                forced_bos_token_id=tok.bos_token_id, forced_eos_token_id=tok.eos_token_id)


@register_tiny("captioner", "florence2", repo=REPO)
def _tiny_florence2(out_dir: str) -> None:
    from transformers import (
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        GenerationConfig,
    )

    tok = florence_tokenizer()
    config = Florence2Config(vision_config=_vision(), text_config=_bart(tok), image_token_id=IMAGE_TOKEN_ID)
    with seeded():
        model = Florence2ForConditionalGeneration(config)
    # BART's decoding: start from </s>, force <s> first and </s> last (Florence-2's raw
    # output reads "</s><s>A car ...</s>").
    model.generation_config = GenerationConfig(decoder_start_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                               forced_bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               forced_eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    images = CLIPImageProcessor(size=square, crop_size=square, do_center_crop=False, resample=3,
                                image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True)
    images.image_seq_length = IMAGE_SEQ_LENGTH
    save_repo_layout(out_dir, model, Florence2Processor(image_processor=images, tokenizer=tok))
