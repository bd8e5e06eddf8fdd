"""The tiny git captioner: a replica of microsoft/git-large-coco.

Real: GitForCausalLM (a CLIP ViT-L/14 image encoder, 224 px), GitProcessor = CLIPImageProcessor
(shortest edge 224, centre crop 224, CLIP mean/std, bicubic) + BertTokenizer (bert-base-uncased's
vocab.txt and tokenizer.json). The decoder starts from [CLS] 101 and stops at [SEP] 102, 1,024
positions, 30,522 embeddings, untied output layer. Sources: docs/teachers.md.
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

REPO = "microsoft/git-large-coco"
# The repo's files that loading reads (weights only as safetensors).
FILES = ("config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
         "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
IMAGE_SIZE, PATCH_SIZE = 224, 14
TEXT = {"vocab_size": 30522, "max_position_embeddings": 1024, "bos_token_id": 101, "eos_token_id": 102,
        "pad_token_id": 0, "tie_word_embeddings": False}

PREPROCESSOR = {
    "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "CLIPImageProcessor",
    "image_std": CLIP_STD,
    "processor_class": "GitProcessor",
    "resample": BICUBIC,
    "rescale_factor": RESCALE,
    "size": {"shortest_edge": IMAGE_SIZE},
}
TOKENIZER_CONFIG = {
    "cls_token": "[CLS]",
    "do_lower_case": True,
    "mask_token": "[MASK]",
    "model_input_names": ["input_ids", "attention_mask"],
    "model_max_length": 512,
    "name_or_path": "bert-base-uncased",
    "pad_token": "[PAD]",
    "processor_class": "GitProcessor",
    "sep_token": "[SEP]",
    "special_tokens_map_file": None,
    "strip_accents": None,
    "tokenize_chinese_chars": True,
    "tokenizer_class": "BertTokenizer",
    "unk_token": "[UNK]",
}
SPECIAL_TOKENS_MAP = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
                      "unk_token": "[UNK]"}


@register_tiny("captioner", "git", repo=REPO)
def _tiny_git(out_dir: str) -> None:
    from transformers import GitConfig, GitForCausalLM

    # projection_dim is a width (512 in the repo): shrunk too.
    vision = shrunk({"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "projection_dim": 32})
    with seeded():
        model = GitForCausalLM(GitConfig(vision_config=vision, **shrunk(TEXT)))
    save_model(out_dir, model)  # generation_config.json: bos 101, eos 102, pad 0, as the repo's
    bert_wordpiece_files(out_dir)
    write_json(out_dir, "preprocessor_config.json", PREPROCESSOR)
    write_json(out_dir, "tokenizer_config.json", TOKENIZER_CONFIG)
    write_json(out_dir, "special_tokens_map.json", SPECIAL_TOKENS_MAP)
    keep_only(out_dir, FILES)
