"""Export a captioning student to ONNX: what models.runtime runs without PyTorch.

    from models.export import export_captioner
    export_captioner(model, tokenizer, "export/", int8=True)

An export directory holds two graphs, the tokenizer and export.json:

    vision.onnx   letterboxed pixels (1, 3, S, S) + content size (h, w) -> the TEE's regions, best
                  first: the backbone, BiFPN, RPN, RoIAlign, box head, class-aware NMS and the
                  region ranking all in the graph (TEE.ranked_regions, traced); `count` says
                  how many to keep, so the number of regions varies per image as in eager.
    fusion.onnx   new positions through the fusion against cached keys/values
                  (FusionGraph): once per image for the context (tags + regions, nothing
                  cached) and once per decoding step for the newest word and the [MASK]
                  (the context and earlier words cached), as models.captioning.CachedStep
                  does; one graph for both, so its weights are stored once.
    tokenizer.json (+ the tokenizer's other files), export.json (shapes, special ids, the
                  TEE's classes, provenance, each file's sha256).

Exporter: the TorchScript-based one (torch.onnx.export(dynamo=False)). The dynamo exporter
traces through torch.export, which needs every data-dependent size (proposals after the
RPN's NMS, candidates above the score threshold, regions kept) declared as an unbacked
symbol and guarded; torchvision's RPN, NMS and RoIAlign carry ONNX symbolics for the
TorchScript exporter, which is how torchvision itself tests their export.

int8: ONNX Runtime's dynamic quantization of the fusion's MatMul and Gemm weights (every
linear layer and the tied word decoder); activations are quantized per call, so no
calibration set is needed. The TEE stays fp32 (docs/deploy.md says why).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import warnings

import torch
from torch import nn

from models.captioning import attend, split_heads
from models.decoding import banned_ids
from models.minivlm import TINY_STUDENT, MiniVLM, box_positions, tiny_name
from models.runtime import EXPORT_NAME, FORMAT, GRAPHS, TOKENIZER_FILE, VERSION
from models.tee import IMAGENET_MEAN, IMAGENET_STD, TEE

OPSET = 17


class NotExportable(ValueError):
    """A checkpoint or model that cannot become an export: named in one line."""


class VisionGraph(nn.Module):
    """The TEE from letterboxed pixels to ranked regions: pixels (1, 3, S, S), size (2,) int64 (h, w)
    -> boxes (n, 4) letterboxed pixels, scores (n,), classes (n,) 1..K, features (n, D), count ()
    [, attributes (n, A)]; n <= num_regions, keep the first `count`."""

    def __init__(self, tee: TEE):
        super().__init__()
        self.tee = tee

    def forward(self, pixels: torch.Tensor, size: torch.Tensor):
        det = self.tee.ranked_regions(pixels, [(size[0], size[1])])[0]
        out = (det["boxes"], det["scores"], det["classes"], det["features"], det["count"])
        return (*out, det["attributes"]) if "attributes" in det else out


class FusionGraph(nn.Module):
    """T text positions and R regions, new, against P cached positions -> their keys and values
    per layer and the masked-token logits of the last new position.

    input_ids, token_type_ids, position_ids (N, T); region_features (N, R, D), region_boxes
    (N, R, 4) normalised xyxy; past_keys, past_values (L, N, h, P, d); allowed (N, 1, T+R,
    P+T+R) bool, who each new position may attend to (cached positions first). -> keys,
    values (L, N, h, T+R, d); logits (N, V). The context is T tags + R regions with P = 0; a
    decoding step is T = 2 (newest word, [MASK]) with R = 0.
    """

    def __init__(self, model: MiniVLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, token_type_ids, position_ids, region_features, region_boxes, past_keys, past_values,
                allowed):
        m = self.model
        text = m.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
        x = torch.cat([text, m.regions(region_features, box_positions(region_boxes))], dim=1)  # (N, T+R, H)
        keys, values = [], []
        for i, layer in enumerate(m.bert.encoder.layer):
            attention = layer.attention.self
            k = split_heads(attention.key(x), m.config.num_heads)  # (N, h, T+R, d)
            v = split_heads(attention.value(x), m.config.num_heads)
            keys.append(k)
            values.append(v)
            x = attend(layer, x, torch.cat([past_keys[i], k], dim=2), torch.cat([past_values[i], v], dim=2), allowed)
        return torch.stack(keys), torch.stack(values), m.mlm(x[:, -1])


def export_captioner(model: MiniVLM, tokenizer, directory: str, *, int8: bool = False, per_channel: bool = False,
                     source: str = "", provenance: str | None = None) -> dict:
    """A captioning MiniVLM with its TEE (as loaded for inference) -> an export in `directory`
    (created if absent; an earlier export's files there are replaced). Returns what export.json says.
    `per_channel` (with int8): one weight scale per output channel instead of per tensor; measured no
    better on the caption check (benchmarks.caption_learning --export --int8-per-channel), so the
    command's --int8 keeps per-tensor scales."""
    if per_channel and not int8:
        raise ValueError("per_channel scales are an int8 setting: pass int8=True with it")
    c = model.config
    if c.task != "captioning":
        raise NotExportable(f"{source or 'the model'} is a {c.task} checkpoint, not a captioning one: only a "
                            "captioner exports (fine-tune it with python -m pipelines.finetune_caption)")
    if model.tee is None:
        raise NotExportable(f"{source or 'the model'} has no TEE: an export captions images, so it needs one")
    model = _plain_copy(model)
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        traced = {}
        vision = os.path.join(directory, GRAPHS["vision"])
        traced["vision"] = _export(
                VisionGraph(model.tee), _vision_example(model.tee), vision, inputs=["pixels", "size"],
                outputs=["boxes", "scores", "classes", "features", "count"]
                + (["attributes"] if model.tee.attribute_head is not None else []),
                dynamic={k: {0: "regions"} for k in ("boxes", "scores", "classes", "features", "attributes")})
        fusion = os.path.join(work if int8 else directory, GRAPHS["fusion"])
        traced["fusion"] = _export(FusionGraph(model), _fusion_example(model), fusion,
                inputs=["input_ids", "token_type_ids", "position_ids", "region_features", "region_boxes",
                        "past_keys", "past_values", "allowed"],
                outputs=["keys", "values", "logits"],
                dynamic={"input_ids": {0: "n", 1: "t"}, "token_type_ids": {0: "n", 1: "t"},
                         "position_ids": {0: "n", 1: "t"}, "region_features": {0: "n", 1: "r"},
                         "region_boxes": {0: "n", 1: "r"}, "past_keys": {1: "n", 3: "p"},
                         "past_values": {1: "n", 3: "p"}, "allowed": {0: "n", 2: "t_r", 3: "p_t_r"},
                         "keys": {1: "n", 3: "t_r"}, "values": {1: "n", 3: "t_r"}, "logits": {0: "n"}})
        if int8:
            quantize(fusion, os.path.join(directory, GRAPHS["fusion"]), per_channel=per_channel)
    tokenizer.save_pretrained(directory)
    if not os.path.exists(os.path.join(directory, TOKENIZER_FILE)):
        raise NotExportable(f"{source or 'the model'}'s tokenizer has no {TOKENIZER_FILE} (a fast tokenizer): the "
                            "runtime reads it with the tokenizers library")
    files = sorted(set(os.listdir(directory)) - {EXPORT_NAME})
    record = {"format": FORMAT, "version": VERSION, "precision": "int8" if int8 else "fp32",
              **({"int8_scales": "per-channel" if per_channel else "per-tensor"} if int8 else {}),
              "graphs": GRAPHS, "tokenizer": TOKENIZER_FILE, "fusion": fusion_record(model, tokenizer),
              "tee": tee_record(model.tee), "source": source, "provenance": provenance or source,
              "init": c.init, "tiny_random": _is_tiny(c.init), "extractor_id": model.tee.extractor_id(),
              "exporter": {"torch": torch.__version__, "opset": OPSET, "onnx_exporter": "torchscript",
                           "trace_warnings": traced},
              "sha256": {name: _sha256(os.path.join(directory, name)) for name in files}}
    with open(os.path.join(directory, EXPORT_NAME), "w") as f:
        json.dump(record, f, indent=2)
    return record


def _is_tiny(init: str) -> bool:
    try:
        return tiny_name(init) == TINY_STUDENT
    except ValueError:
        return False


def fusion_record(model: MiniVLM, tokenizer) -> dict:
    c = model.config
    return {"vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_layers": c.num_layers,
            "num_heads": c.num_heads, "region_feature_dim": c.region_feature_dim,
            "max_caption_tokens": c.max_caption_tokens, "max_tag_tokens": c.max_tag_tokens,
            "max_regions": c.max_regions, "caption_slot": c.caption_slot, "text_length": c.text_length,
            "tag_min_score": c.tag_min_score, "pad_token_id": c.pad_token_id, "cls_token_id": c.cls_token_id,
            "sep_token_id": c.sep_token_id, "mask_token_id": c.mask_token_id,
            "banned": banned_ids(tokenizer.all_special_ids, c.sep_token_id),
            "special_tokens": {name: tokenizer.convert_ids_to_tokens(getattr(c, f"{name}_token_id"))
                               for name in ("pad", "cls", "sep", "mask")}}


def tee_record(tee: TEE) -> dict:
    c = tee.config
    return {"name": c.name, "image_size": c.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "classes": [list(x) for x in c.classes], "attributes": [list(x) for x in c.attributes],
            "attribute_thresh": c.attribute_thresh, "num_regions": c.num_regions, "feature_dim": c.feature_dim}


def quantize(fp32: str, int8: str, *, per_channel: bool = False) -> None:
    """Dynamic int8 quantization of every MatMul/Gemm weight (ONNX Runtime's quantizer), one scale
    per weight tensor or (per_channel) per output channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=per_channel)
    except Exception as e:
        message = " ".join(str(e).split())[:300]
        raise NotExportable(f"cannot quantize {os.path.basename(fp32)} to int8: {message}") from e


# ---- tracing ------------------------------------------------------------------------

def _plain_copy(model: MiniVLM) -> MiniVLM:
    """A copy whose weights are ordinary tensors: folding batch norms under inference_mode makes
    inference tensors, which the tracer refuses."""
    model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=False)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = b.clone()
    return model


def _vision_example(tee: TEE) -> tuple:
    s = tee.config.image_size
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, s, s, generator=g), torch.tensor([s, s - s // 4], dtype=torch.int64)


def _fusion_example(model: MiniVLM) -> tuple:
    """Distinct sizes for every dynamic axis (equal ones could be taken for one): N 2, T 3, R 5, P 4."""
    c = model.config
    n, t, r, p, d = 2, 3, 5, 4, c.hidden_size // c.num_heads
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (n, t), generator=g)
    return (ids, torch.ones_like(ids), torch.arange(t)[None].repeat(n, 1),
            torch.randn(n, r, c.region_feature_dim, generator=g), torch.rand(n, r, 4, generator=g),
            torch.randn(c.num_layers, n, c.num_heads, p, d, generator=g),
            torch.randn(c.num_layers, n, c.num_heads, p, d, generator=g),
            torch.ones(n, 1, t + r, p + t + r, dtype=torch.bool))


def _export(graph: nn.Module, example: tuple, path: str, *, inputs: list[str], outputs: list[str],
            dynamic: dict) -> list[str]:
    """Trace `graph` into `path`; returns the tracer's warnings (distinct, where in our code or torchvision's)."""
    dynamic = {k: v for k, v in dynamic.items() if k in inputs or k in outputs}
    try:
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            # The exporter warns about its own deprecation and about every Python value it traces:
            # dozens, most of them about shapes it keeps symbolic. They are recorded in export.json
            # (trace_warnings), not printed; the parity tests say whether the graph is right.
            warnings.simplefilter("always")
            torch.onnx.export(graph.eval(), example, path, dynamo=False, opset_version=OPSET, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
    except Exception as e:  # an op without an ONNX form, named by the exporter
        message = " ".join(str(e).split())
        raise NotExportable(f"cannot export {os.path.basename(path)}: {message[:300]}") from e
    traced = {f"{os.path.basename(w.filename)}:{w.lineno}: {str(w.message).splitlines()[0][:160]}"
              for w in caught if issubclass(w.category, torch.jit.TracerWarning)}
    return sorted(traced)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
