"""The tiny smolvlm captioner: a replica of HuggingFaceTB/SmolVLM-256M-Instruct, a chat VLM.

Real: Idefics3ForConditionalGeneration (SigLIP base patch16/512 vision tower, pixel
shuffle by 4 -> 64 image tokens per 512x512 tile, SmolLM2-135M text model with 30
layers, 9 heads / 3 key-value heads, 8192 positions, a 49280-row embedding),
Idefics3Processor (image_seq_len 64, SmolVLM's chat template), Idefics3ImageProcessor
(longest edge resized to 2048 and split into 512x512 tiles plus the whole image at 512,
Lanczos, mean = std = 0.5), SmolLM2's GPT2Tokenizer: byte-level BPE, 49152 pieces with
<|endoftext|>=0, <|im_start|>=1, <|im_end|>=2 ... <empty_output>=16, then SmolVLM's
added tokens <global-img>=49152, <row_1_col_1>..<row_6_col_6>=49153..49188,
<fake_token_around_image>=49189, <image>=49190, <end_of_utterance>=49191 (where an
answer ends). A prompt reads "<|im_start|>User:<image>Describe this image.<end_of_utterance>\\nAssistant:".
"""
from __future__ import annotations

from teachers.registry import register_tiny
from teachers.replicas.common import byte_level_bpe, reload_with, save_repo_layout, seeded

REPO = "HuggingFaceTB/SmolVLM-256M-Instruct"
SMOLLM2_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
    "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
    "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>",
]
SMOLLM2_PIECES = 49152
SMOLVLM_TOKENS = (["<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
                  + ["<fake_token_around_image>", "<image>", "<end_of_utterance>"])
IMAGE_TOKEN_ID = 49190
END_OF_UTTERANCE_ID = 49191
EMBEDDINGS = 49280
TILE = 512
IMAGE_SEQ_LEN = 64  # (512 / 16) ** 2 / 4 ** 2
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def smolvlm_tokenizer():
    from transformers import AddedToken, GPT2Tokenizer

    vocab, merges = byte_level_bpe({t: i for i, t in enumerate(SMOLLM2_SPECIALS)}, SMOLLM2_PIECES)
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="<|im_start|>", eos_token="<|im_end|>",
                        pad_token="<|im_end|>", unk_token="<|endoftext|>", model_max_length=8192)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SMOLVLM_TOKENS], special_tokens=True)
    tok = reload_with(tok, eos_token="<end_of_utterance>")
    ids = tok.convert_tokens_to_ids(["<image>", "<end_of_utterance>"])
    if ids != [IMAGE_TOKEN_ID, END_OF_UTTERANCE_ID]:
        raise ValueError(f"<image>, <end_of_utterance> are {ids}, SmolVLM has {IMAGE_TOKEN_ID}, {END_OF_UTTERANCE_ID}")
    return tok


def _text(tok) -> dict:
    # Real: hidden 576, intermediate 1536, 30 layers, 9 heads of 64, 3 key-value heads.
    return dict(model_type="llama", vocab_size=EMBEDDINGS, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=8192,
                rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id)


@register_tiny("captioner", "smolvlm", repo=REPO)
def _tiny_smolvlm(out_dir: str) -> None:
    from transformers import (
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tok = smolvlm_tokenizer()
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE,
                  patch_size=16)
    config = Idefics3Config(vision_config=vision, text_config=_text(tok), image_token_id=IMAGE_TOKEN_ID,
                            scale_factor=4)
    with seeded():
        model = Idefics3ForConditionalGeneration(config)
    # An answer ends with <end_of_utterance>, the tokenizer's eos.
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=[END_OF_UTTERANCE_ID],
                                               pad_token_id=tok.pad_token_id)
    images = Idefics3ImageProcessor(size={"longest_edge": 4 * TILE}, max_image_size={"longest_edge": TILE},
                                    resample=1, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                                    do_image_splitting=True, do_pad=True, do_convert_rgb=True)
    save_repo_layout(out_dir, model, Idefics3Processor(image_processor=images, tokenizer=tok),
                     processor_args={"image_seq_len": IMAGE_SEQ_LEN}, chat_template=CHAT_TEMPLATE)
