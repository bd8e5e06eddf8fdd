"""Every teacher family (BLIP, BLIP-2, GIT, Florence-2, SmolVLM captioners; SigLIP, SigLIP 2,
CLIP taggers) through the real labeling job, how each is prompted, and how teachers run:
--dtype and the attention implementation, recorded in every row and in run.json."""
import json

import numpy as np
import pytest
import torch

import teachers
from teachers import CaptionParams, TagParams, registry
from teachers.captioner import CHAT_FAMILIES
from teachers.common import CPU_HALF_FAMILIES, attention_of, check_dtype, pick_dtype
from teachers.loading import TeacherRef, model_config
from tests.conftest import run_cli
from tests.imagegen import gradient
from tests.test_cli import _manifest_ids, _outputs

IMAGES = [gradient(64, 48), gradient(30, 90), np.full((40, 40, 3), 200, np.uint8)]
INSTRUCTION = "Describe this image in one sentence."
GENERATION = ["--num-captions", "2", "--num-beams", "3", "--max-new-tokens", "6"]
# One job per captioner family, each with a tagger family: together they run every family.
JOBS = {
    "blip": ("siglip", []),
    "blip2": ("siglip2", ["--dtype", "bfloat16", "--device", "cpu"]),  # half precision on a CPU, end to end
    "florence2": ("siglip2-naflex", []),  # no prompt: Florence-2's own <CAPTION>
    "git": ("clip", ["--caption-prompt", "a photo of"]),
    "smolvlm": ("siglip", ["--prompt", INSTRUCTION]),
}
PROMPT_RECORDED = {"blip": None, "blip2": None, "florence2": "<CAPTION>", "git": "a photo of", "smolvlm": INSTRUCTION}
EAGER_ONLY = {"blip", "git"}  # their model classes have no SDPA attention


def test_every_family_is_a_replica_of_a_real_repo():
    assert set(registry.tiny_families("captioner")) >= set(JOBS)
    assert {t for t, _ in JOBS.values()} == set(registry.tiny_families("tagger"))
    assert registry.replicated_repo("captioner", "blip2") == "Salesforce/blip2-opt-2.7b"
    assert registry.replicated_repo("captioner", "florence2") == "florence-community/Florence-2-base"
    assert registry.replicated_repo("captioner", "smolvlm") == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert registry.replicated_repo("tagger", "siglip2") == "google/siglip2-so400m-patch14-384"
    assert registry.replicated_repo("tagger", "siglip2-naflex") == "google/siglip2-base-patch16-naflex"


# ---- the labeling job, one per captioner family ------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("captioner", sorted(JOBS))
def test_labeling_job_with_each_family(tmp_path, captioner):
    tagger, flags = JOBS[captioner]
    out = tmp_path / "out"
    proc = run_cli("--runner", "DirectRunner", "--captioner", f"tiny:{captioner}", "--tagger", f"tiny:{tagger}",
                   *GENERATION, *flags, "--tag-threshold", "0", "--limit", "3", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels, failures, run = _outputs(out)
    assert sorted(r["image_id"] for r in labels) == sorted(_manifest_ids()[:3]) and not failures
    dtype = "bfloat16" if "bfloat16" in flags else "float32"
    for row in labels:
        assert (row["captioner"], row["tagger"]) == (f"tiny-random/{captioner}", f"tiny-random/{tagger}")
        assert row["captions"] and all(c["text"] and np.isfinite(c["score"]) for c in row["captions"])
        assert row["tags"]
        params = json.loads(row["teacher_params"])
        assert params["caption"]["prompt"] == PROMPT_RECORDED[captioner]
        assert params["caption"]["num_beams"] == 3 and params["caption"]["max_new_tokens"] == 6
        for stage, family in (("caption", captioner), ("tag", tagger)):
            assert params[stage]["requested"] == {"dtype": "bfloat16" if dtype == "bfloat16" else "auto",
                                                  "attn_implementation": "sdpa"}
            assert params[stage]["runtime"] == {"device": "cpu", "dtype": dtype,
                                                "attn_implementation": "eager" if family in EAGER_ONLY else "sdpa"}
    assert run["status"] == "succeeded" and run["options"]["dtype"] == ("bfloat16" if dtype == "bfloat16" else "auto")
    assert run["teachers"]["captioner"]["params"]["prompt"] == PROMPT_RECORDED[captioner]
    assert run["teachers"]["captioner"]["requested"]["attn_implementation"] == "sdpa"
    assert run["teachers"]["tagger"]["requested"]["dtype"] == run["options"]["dtype"]


# ---- prompts ---------------------------------------------------------------------------

def _generation(family, prompt):
    cap = teachers.load_captioner(f"tiny:{family}", CaptionParams(2, 3, 5, prompt=prompt), device="cpu")
    inputs = cap.inputs(IMAGES)
    out = cap.generate(inputs)
    return cap, inputs, out


@pytest.mark.parametrize("family,prompt", [("smolvlm", INSTRUCTION), ("git", "a photo of"),
                                           ("blip2", "a photo of"), ("blip", "a photo of")])
def test_decoder_families_caption_only_what_follows_the_prompt(family, prompt):
    cap, inputs, out = _generation(family, prompt)
    generated = cap.generated_tokens(out)
    assert generated.shape[1] <= 5  # --max-new-tokens
    # What the model reads last before it generates: the prompt (a chat VLM's: its chat
    # template's text after the image, closing with "Assistant:").
    last_text = cap.text.split("<image>")[-1] if cap.chat else prompt
    prompt_ids = cap.processor.tokenizer(last_text, add_special_tokens=False)["input_ids"]
    sequences = out.sequences
    n = sequences.shape[1] - generated.shape[1]
    if family != "blip":  # BLIP's generate swaps its first token for [DEC] and drops the closing [SEP]
        assert torch.equal(sequences[:, :n], inputs["input_ids"].repeat_interleave(2, dim=0))
    assert torch.equal(sequences[:, n:], generated)
    # Those tokens end right where generation starts (BLIP drops its closing [SEP] itself, GIT's is not passed).
    assert sequences[0, n - len(prompt_ids):n].tolist() == prompt_ids
    texts = cap.processor.batch_decode(generated, skip_special_tokens=True)
    captions = [c["text"] for per_image in cap(IMAGES) for c in per_image]
    assert captions and set(captions) <= {" ".join(t.split()) for t in texts}
    assert not any(c.startswith(prompt) for c in captions)


def test_chat_prompt_goes_through_the_chat_template():
    cap, inputs, _ = _generation("smolvlm", INSTRUCTION)
    assert cap.chat and cap.text == f"<|im_start|>User:<image>{INSTRUCTION}<end_of_utterance>\nAssistant:"
    tok = cap.processor.tokenizer
    ids = inputs["input_ids"]
    assert tok.padding_side == "left" and (ids == tok.convert_tokens_to_ids("<image>")).sum(1).min() >= 64
    assert tok.decode(ids[0, -40:]).endswith(f"{INSTRUCTION}<end_of_utterance>\nAssistant:")


def test_florence2_task_token_becomes_its_instruction_and_nothing_is_stripped():
    cap, inputs, out = _generation("florence2", None)
    assert cap.params.prompt == "<CAPTION>"  # the default task
    tok = cap.processor.tokenizer
    assert tok.decode(inputs["input_ids"][0], skip_special_tokens=True) == "What does the image describe?"
    assert (inputs["input_ids"][0] == cap.model.config.image_token_id).sum() == 577  # 24x24 + 1 image tokens
    generated = cap.generated_tokens(out)
    # An encoder-decoder's output is its decoder start token, then what it generated.
    assert torch.equal(out.sequences[:, 1:], generated) and (out.sequences[:, 0] == tok.eos_token_id).all()
    detailed = teachers.load_captioner("tiny:florence2", CaptionParams(1, 1, 3, prompt="<MORE_DETAILED_CAPTION>"),
                                       device="cpu")
    asked = detailed.inputs(IMAGES[:1])["input_ids"][0]
    assert tok.decode(asked, skip_special_tokens=True) == "Describe with a paragraph what is shown in the image."


def test_prompt_defaults_and_refusals_per_family():
    assert teachers.caption_params_for("tiny:florence2", CaptionParams()).prompt == "<CAPTION>"
    assert teachers.caption_params_for("tiny:florence2", CaptionParams(prompt="<OD>")).prompt == "<OD>"
    assert teachers.caption_params_for("tiny:blip2", CaptionParams()).prompt is None
    assert model_config(TeacherRef("captioner", "tiny:smolvlm"))["model_type"] in CHAT_FAMILIES
    with pytest.raises(ValueError, match="chat model .*--prompt 'Describe this image in one sentence.'") as e:
        teachers.caption_params_for("tiny:smolvlm", CaptionParams())
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="needs an instruction"):  # the library refuses it too
        teachers.load_captioner("tiny:smolvlm", CaptionParams(), device="cpu")


def test_chat_captioner_without_a_prompt_exits_2_before_any_work(tmp_path):
    proc = run_cli("--runner", "DirectRunner", "--captioner", "tiny:smolvlm", "--tagger", "none",
                   "--output", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("pseudo_label: error: the captioner is a chat model (idefics3)") and "--prompt" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("repo,port", [("microsoft/Florence-2-large", "florence-community/Florence-2-large"),
                                       ("microsoft/Florence-2-base-ft@main", "florence-community/Florence-2-base-ft")])
def test_remote_code_florence2_is_refused_with_its_native_port(tmp_path, repo, port):
    proc = run_cli("--runner", "DirectRunner", "--captioner", repo, "--tagger", "none", "--output", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("pseudo_label: error: ") and f"use {port}," in line and "--trust-remote-code" in line
    assert not (tmp_path / "out").exists()
    teachers.check_remote_code(repo, trust_remote_code=True)  # allowed when the user trusts its code


# ---- SigLIP 2 text: lowercase, <eos>, padded to 64 -------------------------------------------

@pytest.mark.parametrize("family", ["siglip2", "siglip2-naflex"])
def test_siglip2_texts_are_lowercased_and_padded_to_64_as_trained(family):
    tagger = teachers.load_tagger(f"tiny:{family}", TagParams(threshold=0.0, max_tags=3), device="cpu")
    tok = tagger.processor.tokenizer
    assert len(tok) == tagger.model.config.text_config.vocab_size == 256000
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tagger.text_inputs(["A Photo of a CAT.", "a photo of a cat."])["input_ids"]
    assert ids.shape == (2, 64) and torch.equal(ids[0], ids[1])  # lowercased before tokenising
    words = tok("a photo of a cat.", add_special_tokens=False)["input_ids"]
    n = len(words)
    assert ids[0, :n].tolist() == words and ids[0, n] == 1 and (ids[0, n + 1:] == 0).all()  # no <bos>, <eos>, <pad>s
    assert set(tagger.text_inputs(["x"])) == {"input_ids"}  # no attention mask, as trained
    # The repo's own tokenizer class: the fixed-resolution repos' GemmaTokenizer keeps case
    # (the tagger lowercases), NaFlex's Siglip2Tokenizer lowercases by itself.
    cased = tok("A CAT", add_special_tokens=False)["input_ids"] != tok("a cat", add_special_tokens=False)["input_ids"]
    assert (type(tok).__name__, cased) == {"siglip2": ("GemmaTokenizer", True),
                                           "siglip2-naflex": ("Siglip2Tokenizer", False)}[family]
    assert tagger.measure == "siglip-sigmoid" and len(tagger(IMAGES)[0]) == 3


# ---- --dtype and attention -------------------------------------------------------------------

def test_pick_dtype():
    assert pick_dtype("cpu") == pick_dtype("cpu", "auto") == torch.float32
    assert pick_dtype("cpu", "bfloat16") == torch.bfloat16 and pick_dtype("cuda:1", "float16") == torch.float16
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, float16, not 'half'"):
        pick_dtype("cpu", "half")


def test_auto_dtype_on_gpus_follows_native_bfloat16(monkeypatch):
    """auto on CUDA: bf16 where the GPU runs it natively, else fp16 (no GPU here: torch's answer is stubbed)."""
    import contextlib

    asked = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: asked.append(d) or contextlib.nullcontext())
    for native, expected in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n and
                            not including_emulation)
        assert pick_dtype("cuda:1") == expected
    assert asked[0] == torch.device("cuda:1")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind,family", [(k, f) for k in ("captioner", "tagger") for f in registry.tiny_families(k)])
def test_every_family_runs_in_half_precision_on_cpu(kind, family, dtype):
    """What CPU_HALF_FAMILIES claims: each family loads and labels in bf16 and fp16 on a CPU."""
    assert model_config(TeacherRef(kind, f"tiny:{family}"))["model_type"] in CPU_HALF_FAMILIES
    if kind == "captioner":
        prompt = INSTRUCTION if family == "smolvlm" else None
        model = teachers.load_captioner(f"tiny:{family}", CaptionParams(1, 2, 3, prompt=prompt), device="cpu",
                                        dtype=dtype)
        results = model(IMAGES[:2])
        assert all(np.isfinite(c["score"]) for per_image in results for c in per_image)
    else:
        model = teachers.load_tagger(f"tiny:{family}", TagParams(threshold=0.0, max_tags=2), device="cpu", dtype=dtype)
        results = model(IMAGES[:2])
        assert all(len(tags) == 2 and all(np.isfinite(t["score"]) for t in tags) for tags in results)
    # Loaded in that dtype (BLIP-2 keeps its Q-Former in float32 under float16, by design).
    assert {p.dtype for p in model.model.parameters()} >= {getattr(torch, dtype)}
    assert model.runtime() == {"device": "cpu", "dtype": dtype,
                               "attn_implementation": "eager" if family in EAGER_ONLY else "sdpa"}
    assert attention_of(model.model) == model.runtime()["attn_implementation"]


def test_half_precision_on_cpu_is_refused_for_unverified_families():
    check_dtype("cpu", "float16", "siglip")  # verified
    check_dtype("cuda", "float16", "paligemma")  # GPUs run any family in half precision
    check_dtype("cpu", "float32", "paligemma")
    with pytest.raises(ValueError, match=r"--dtype bfloat16 on a CPU is not supported for paligemma models .*"
                                         r"use --dtype float32, or --device cuda") as e:
        check_dtype("cpu", "bfloat16", "paligemma")
    assert "\n" not in str(e.value)


def test_bad_dtype_flag_exits_2(tmp_path):
    proc = run_cli("--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny", "--dtype", "half",
                   "--output", tmp_path / "out")
    assert proc.returncode == 2 and "invalid choice: 'half'" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
