"""The tiny siglip tagger: a replica of google/siglip-so400m-patch14-384.

Real: SiglipModel, SiglipProcessor = SiglipImageProcessor (384 x 384, mean/std 0.5, bicubic) +
SiglipTokenizer (SentencePiece spiece.model, 32,000 pieces, </s> = 1 pads and ends, <unk> = 2,
64 positions). The replica's spiece.model is trained here on a small corpus, so it has far fewer
pieces, but the same special pieces at the same ids; the config keeps vocab_size 32,000.
Sources of every value: docs/teachers.md.
"""
from __future__ import annotations

from teachers.registry import register_tiny
from teachers.replicas.common import (
    BICUBIC,
    RESCALE,
    keep_only,
    replica_corpus,
    save_model,
    seeded,
    sentencepiece_model,
    shrunk,
    write_json,
)

REPO = "google/siglip-so400m-patch14-384"
# The repo's files that loading reads (weights only as safetensors).
FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json", "spiece.model",
         "tokenizer_config.json")
IMAGE_SIZE, PATCH_SIZE = 384, 14
VOCAB_SIZE, MAX_POSITIONS = 32000, 64  # the config omits them: SiglipTextConfig's defaults

PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor",
    "resample": BICUBIC,
    "rescale_factor": RESCALE,
    "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
}
_SPECIAL = {"lstrip": True, "normalized": False, "rstrip": True, "single_word": False}
TOKENIZER_CONFIG = {
    "added_tokens_decoder": {"1": {"content": "</s>", **_SPECIAL, "special": True},
                             "2": {"content": "<unk>", **_SPECIAL, "special": True}},
    "additional_special_tokens": [],
    "clean_up_tokenization_spaces": True,
    "do_lower_case": True,
    "eos_token": "</s>",
    "model_input_names": ["input_ids"],
    "model_max_length": MAX_POSITIONS,
    "pad_token": "</s>",
    "processor_class": "SiglipProcessor",
    "sp_model_kwargs": {},
    "tokenizer_class": "SiglipTokenizer",
    "unk_token": "<unk>",
}
SPECIAL_TOKENS_MAP = {"eos_token": {"content": "</s>", **_SPECIAL}, "pad_token": {"content": "</s>", **_SPECIAL},
                      "unk_token": {"content": "<unk>", **_SPECIAL}}


@register_tiny("tagger", "siglip", repo=REPO)
def _tiny_siglip(out_dir: str) -> None:
    import torch
    from transformers import SiglipConfig, SiglipModel

    text = shrunk({"vocab_size": VOCAB_SIZE, "max_position_embeddings": MAX_POSITIONS})
    vision = shrunk({"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE})
    with seeded():
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        with torch.no_grad():
            # Real SigLIP learns bias ~ -10; at random init that would put every tag at ~0.
            model.logit_bias.zero_()
    save_model(out_dir, model)
    # T5's c4_en vocabulary layout, which SigLIP's English checkpoints use: <pad> 0, </s> 1, <unk> 2.
    spiece = sentencepiece_model(replica_corpus(), vocab_size=1000, pad=("<pad>", 0), eos=("</s>", 1),
                                 unk=("<unk>", 2))
    with open(f"{out_dir}/spiece.model", "wb") as f:
        f.write(spiece)
    write_json(out_dir, "preprocessor_config.json", PREPROCESSOR)
    write_json(out_dir, "tokenizer_config.json", TOKENIZER_CONFIG)
    write_json(out_dir, "special_tokens_map.json", SPECIAL_TOKENS_MAP)
    keep_only(out_dir, FILES)
