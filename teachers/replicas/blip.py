"""The tiny blip captioner: a replica of Salesforce/blip-image-captioning-large.

Real: BlipForConditionalGeneration, BlipProcessor = BlipImageProcessor (384 x 384, CLIP mean/std,
bicubic) + BertTokenizer (bert-base-uncased's vocab.txt and tokenizer.json, 30,522 tokens). The
text config has 30,524 embeddings: the decoder starts from bos 30522 ([DEC] in BLIP's training
code), which the repo's tokenizer does not list, and stops at [SEP] 102. Sources: docs/teachers.md.
"""
from __future__ import annotations

from teachers.registry import register_tiny
from teachers.replicas.common import (
    BICUBIC,
    CLIP_MEAN,
    CLIP_STD,
    RESCALE,
    bert_wordpiece_files,
    keep_only,
    save_model,
    seeded,
    shrunk,
    write_json,
)

REPO = "Salesforce/blip-image-captioning-large"
# The repo's files that loading reads; it has no generation_config.json (weights only as safetensors).
FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
         "tokenizer.json", "tokenizer_config.json", "vocab.txt")
IMAGE_SIZE, PATCH_SIZE = 384, 16
# The text config's ids and sizes (BlipTextConfig's defaults, which the repo's config keeps).
TEXT = {"vocab_size": 30524, "max_position_embeddings": 512, "bos_token_id": 30522, "eos_token_id": 2,
        "pad_token_id": 0, "sep_token_id": 102}

PREPROCESSOR = {
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "BlipImageProcessor",
    "image_std": CLIP_STD,
    "processor_class": "BlipProcessor",
    "resample": BICUBIC,
    "rescale_factor": RESCALE,
    "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "size_divisor": 32,
}
TOKENIZER_CONFIG = {
    "cls_token": "[CLS]",
    "do_basic_tokenize": True,
    "do_lower_case": True,
    "mask_token": "[MASK]",
    "model_max_length": 512,
    "name_or_path": REPO,
    "never_split": None,
    "pad_token": "[PAD]",
    "processor_class": "BlipProcessor",
    "sep_token": "[SEP]",
    "special_tokens_map_file": None,
    "strip_accents": None,
    "tokenize_chinese_chars": True,
    "tokenizer_class": "BertTokenizer",
    "unk_token": "[UNK]",
    "model_input_names": ["input_ids", "attention_mask"],
}
SPECIAL_TOKENS_MAP = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
                      "unk_token": "[UNK]"}


@register_tiny("captioner", "blip", repo=REPO)
def _tiny_blip(out_dir: str) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration

    vision = shrunk({"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE})
    with seeded():
        # projection_dim and image_text_hidden_size are widths (512, 256 in the repo): shrunk too.
        model = BlipForConditionalGeneration(BlipConfig(text_config=shrunk(TEXT), vision_config=vision,
                                                        projection_dim=32, image_text_hidden_size=32))
    save_model(out_dir, model)
    bert_wordpiece_files(out_dir)
    write_json(out_dir, "preprocessor_config.json", PREPROCESSOR)
    write_json(out_dir, "tokenizer_config.json", TOKENIZER_CONFIG)
    write_json(out_dir, "special_tokens_map.json", SPECIAL_TOKENS_MAP)
    keep_only(out_dir, FILES)
