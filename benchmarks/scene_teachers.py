"""Teachers trained here: a BLIP captioner and a SigLIP tagger, from scratch on synthetic scenes.

The distillation benchmark (benchmarks.distillation) needs teachers that know something
the student does not, and whose labels can be scored. Real hub teachers cannot be
downloaded here, so two are trained on a *teacher set* of synthetic scenes
(benchmarks.synthetic_scenes) with its ground truth, and saved as ordinary Hugging Face
model folders that `pipelines.pseudo_label --captioner DIR --tagger DIR` loads through the
same path as a hub model:

- captioner: BlipForConditionalGeneration with a BlipProcessor (BlipImageProcessor +
  BertTokenizer), the classes of Salesforce/blip-image-captioning-large; its WordPiece
  vocabulary is the scenes' words (a few dozen) beside BERT's special tokens, trained on
  `[CLS] caption [SEP]`;
- tagger: SiglipModel with a SiglipProcessor (SiglipImageProcessor + SiglipTokenizer on a
  SentencePiece model of the scenes' words), the classes of google/siglip-so400m-patch14-384.
  It learns what the labeling job asks of it: the sigmoid score of an image against
  each tag's prompt (`--tag-prompt`, through `Tagger.text_inputs`, the job's own text
  layout), and against captions (`--rerank`): each image's caption beside the others of
  its batch and beside a corrupted copy of it (one colour, shape or relation changed), so
  that reranking tells a right caption from a near miss.

Both vision towers are ViTs trained from nothing on a few thousand images, which on their
own learn colours and layout but not shapes within a CPU budget. Two standard remedies
for small-data ViTs close that gap: position embeddings that start from 2-D sine-cosine
codes (MAE) instead of noise, and dense supervision from the teacher set's boxes
(`PatchHeads`: each patch's shape and colour, training-only heads that are not saved).
Patches of 8 pixels at 96 keep a small shape over a few patches.

Tags speak the TEE's language: a region of a TEE with the attribute head is named
"red large circle" (colour, size, shape), and so is each tag of the vocabulary
(`tag_vocabulary`, written in Open Images' class-descriptions format).

Training is seeded and cached by a digest of its settings and of the teacher set's
ground truth (`trained_teacher`): a rerun with the same settings loads the folder.
Teachers are not the product's to train, so this lives with the benchmarks.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from benchmarks.synthetic_scenes import PALETTE, SHAPES, SIZES

TAG_PROMPT = "a photo of a {}."
TAG_LABEL_PREFIX = "/synth/tag/"
TRAINING_RECORD = "training.json"
# Bump when what a teacher's training does changes, so no cached folder of an older recipe is reused.
RECIPE_VERSION = 1
RELATIONS = ("left of", "above", "below")


# ---- the scenes' language ------------------------------------------------------------------

def object_tag(obj: dict) -> str:
    """A scene object's tag, in the words and order the TEE names a region with: "red large circle"."""
    return f"{obj['color']} {obj['size']} {obj['name']}"


def tag_vocabulary() -> list[tuple[str, str]]:
    """(LabelName, DisplayName) of every colour x size x shape: the tagger's vocabulary."""
    names = [f"{c} {s} {shape}" for c in PALETTE for s in SIZES for shape in SHAPES]
    return [(TAG_LABEL_PREFIX + n.replace(" ", "-"), n) for n in names]


def write_tag_vocab(path: str) -> str:
    """The vocabulary as an Open Images class-descriptions CSV (LabelName,DisplayName)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["LabelName", "DisplayName"])
        w.writerows(tag_vocabulary())
    return path


def words(texts) -> list[str]:
    """The distinct words and punctuation marks of `texts`, sorted."""
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})


def corrupt(caption: str, rng: np.random.Generator) -> str:
    """The caption with one colour, shape or relation changed (articles kept right): a near miss.
    An empty scene's caption becomes a one-object one."""
    colours, shapes = list(PALETTE), list(SHAPES)
    pattern = re.compile(rf"\b({'|'.join([*colours, *shapes, *RELATIONS])})\b")
    spots = list(pattern.finditer(caption))
    if not spots:
        return _articles(f"a {colours[int(rng.integers(len(colours)))]} {shapes[int(rng.integers(len(shapes)))]}")
    spot = spots[int(rng.integers(len(spots)))]
    word = spot.group(1)
    pool = colours if word in colours else shapes if word in shapes else list(RELATIONS)
    others = [w for w in pool if w != word]
    new = others[int(rng.integers(len(others)))]
    return _articles(caption[:spot.start()] + new + caption[spot.end():])


def _articles(text: str) -> str:
    text = re.sub(r"\ban (?=[^aeiou\W])", "a ", text)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


# ---- settings and the cache -----------------------------------------------------------------

@dataclass(frozen=True)
class CaptionerSettings:
    """A BLIP captioner: a ViT image encoder and a text decoder that cross-attends to its patches."""
    image_size: int = 96
    patch_size: int = 8
    vision_hidden: int = 192
    vision_layers: int = 3
    hidden: int = 192
    layers: int = 3
    heads: int = 4
    patch_supervision: float = 1.0  # weight of the per-patch shape and colour loss (0: captions alone)
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class TaggerSettings:
    """A SigLIP tagger: a ViT image tower and a text tower, scored by a learned sigmoid."""
    image_size: int = 96
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    text_hidden: int = 128
    text_layers: int = 2
    text_positions: int = 24  # captions of three objects are at most ~17 pieces; SigLIP pads every text to this
    heads: int = 4
    patch_supervision: float = 1.0  # weight of the per-patch shape and colour loss (0: texts alone)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    prompt: str = TAG_PROMPT
    seed: int = 0


KINDS = {"captioner": CaptionerSettings, "tagger": TaggerSettings}


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def teacher_digest(kind: str, settings, captions_json: str) -> str:
    """What identifies a trained teacher: its kind, settings, recipe version and ground truth."""
    key = {"kind": kind, "settings": asdict(settings), "recipe": RECIPE_VERSION, "data": file_digest(captions_json)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def trained_teacher(kind: str, settings, captions_json: str, images_dir: str, root: str, *,
                    device: str = "cpu", log=print) -> tuple[str, dict]:
    """(folder, training record) of the `kind` teacher trained with `settings` on the scenes of
    `captions_json`: loaded from root/<kind>-<digest> when it is there, else trained into it."""
    digest = teacher_digest(kind, settings, captions_json)
    final = os.path.join(root, f"{kind}-{digest[:12]}")
    record_path = os.path.join(final, TRAINING_RECORD)
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get("digest") == digest:
            log(f"{kind}: cached in {final} (trained in {record['seconds']:.0f} s)")
            return final, record
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{kind}-", dir=root)
    try:
        train = train_captioner if kind == "captioner" else train_tagger
        t0 = time.monotonic()
        record = train(settings, captions_json, images_dir, tmp, device=device, log=log)
        record.update(kind=kind, digest=digest, settings=asdict(settings), recipe=RECIPE_VERSION,
                      seconds=round(time.monotonic() - t0, 1), data=os.path.abspath(captions_json),
                      device=device)
        with open(os.path.join(tmp, TRAINING_RECORD), "w") as f:
            json.dump(record, f, indent=2)
        _model_card(tmp, kind, record)
        shutil.rmtree(final, ignore_errors=True)  # a folder of another digest prefix collision or a broken run
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, record


def _model_card(out_dir: str, kind: str, record: dict) -> None:
    """A Hugging Face model card: what the folder is and how it was made."""
    family, task = (("blip", "image-to-text") if kind == "captioner" else ("siglip", "zero-shot-image-classification"))
    s = record["settings"]
    lines = ["---", "library_name: transformers", f"pipeline_tag: {task}", "tags:", f"- {family}",
             "- synthetic-scenes", "- minivlm-distill-benchmark", "---", "",
             f"# A {family.upper()} {kind} trained from scratch on synthetic scenes", "",
             (f"Trained by `benchmarks.scene_teachers` for `benchmarks.distillation` on {record['images']} scenes "
              f"({record['data']}), {s['steps']} steps of {s['batch_size']}, seed {s['seed']}, "
              f"in {record['seconds']:.0f} s on {record['device']}. {record['parameters']:,} parameters."), "",
             "Settings: `" + json.dumps(s) + "`", "",
             ("It knows coloured shapes on textured backgrounds and nothing else: a teacher for the benchmark, "
              "not a model for real images."), ""]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(lines))


# ---- data ----------------------------------------------------------------------------------

def read_scenes(captions_json: str) -> list[dict]:
    """The scenes of a synthetic_scenes COCO file: {id, file_name, caption, objects}, in id order."""
    with open(captions_json) as f:
        coco = json.load(f)
    captions = {a["image_id"]: a["caption"] for a in coco["annotations"]}
    return sorted(({"id": im["id"], "file_name": im["file_name"], "caption": captions[im["id"]],
                    "objects": im.get("objects", [])} for im in coco["images"]), key=lambda s: s["id"])


def scene_pixels(scenes: list[dict], images_dir: str, image_processor, chunk: int = 256):
    """(N, 3, S, S) float32: every scene's image decoded as the labeling job decodes it (RGB) and
    put through the teacher's own image processor once, so training sees what inference sees."""
    import torch
    from PIL import Image

    out = []
    for start in range(0, len(scenes), chunk):
        images = []
        for s in scenes[start:start + chunk]:
            with Image.open(os.path.join(images_dir, s["file_name"])) as im:
                images.append(np.asarray(im.convert("RGB")))
        out.append(image_processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(out)


def _schedule(optimizer, steps: int):
    """Linear warmup over 5% of the steps, then cosine to zero."""
    import torch

    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train(model, settings, n: int, loss_of, device: str, log, name: str, extra=()) -> list[dict]:
    """AdamW with warmup + cosine and gradient clipping; batches drawn with the settings' seed.
    loss_of(batch indices) -> (total loss, {part: value}); `extra`: training-only parameters beside
    the model's. Returns the logged losses."""
    import torch

    model.to(device).train()
    params = [*model.parameters(), *extra]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.01)
    schedule = _schedule(optimizer, settings.steps)
    draw = torch.Generator().manual_seed(settings.seed)
    history, t0, every = [], time.monotonic(), max(1, settings.steps // 10)
    for step in range(settings.steps):
        batch = torch.randint(0, n, (settings.batch_size,), generator=draw)
        loss, parts = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % every == 0 or step == settings.steps - 1:
            entry = {"step": step + 1, **{k: round(float(v), 4) for k, v in parts.items()},
                     "seconds": round(time.monotonic() - t0, 1)}
            history.append(entry)
            log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in entry.items()))
    return history


# ---- the captioner: BLIP ----------------------------------------------------------------------

def sincos_positions(grid: int, dim: int):
    """(grid * grid, dim) fixed 2-D sine-cosine position codes (MAE's), row-major like ViT patches:
    a from-scratch ViT's learnable position embeddings start from them instead of noise, so where a
    patch lies (which object is left of which) is known from the first step."""
    import torch

    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    parts = []
    for axis in (xs.flatten(), ys.flatten()):
        angles = axis[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    codes = torch.cat(parts, dim=1)  # (grid * grid, 4 * quarter)
    return torch.nn.functional.pad(codes, (0, dim - codes.shape[1]))


def caption_tokenizer(vocabulary: list[str], out_dir: str):
    """BERT's WordPiece tokenizer class over BERT's special tokens + `vocabulary` (vocab.txt in out_dir):
    [CLS] starts a caption, [SEP] ends it."""
    from transformers import BertTokenizer

    vocab_file = os.path.join(out_dir, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocabulary]) + "\n")
    return BertTokenizer(vocab=vocab_file)


def build_captioner(settings: CaptionerSettings, vocabulary: list[str], out_dir: str):
    """A random BLIP captioner (BlipForConditionalGeneration, BlipProcessor) whose WordPiece vocabulary is
    BERT's special tokens + `vocabulary`; the processor is saved to out_dir (the model after training).
    (model, processor)."""
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    from teachers.replicas.common import BICUBIC, CLIP_MEAN, CLIP_STD

    s, size = settings, settings.image_size
    tokenizer = caption_tokenizer(vocabulary, out_dir)
    image_processor = BlipImageProcessor(size={"height": size, "width": size}, image_mean=CLIP_MEAN,
                                         image_std=CLIP_STD, resample=BICUBIC)
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    config = BlipConfig(
        vision_config={"hidden_size": s.vision_hidden, "intermediate_size": 4 * s.vision_hidden,
                       "num_hidden_layers": s.vision_layers, "num_attention_heads": s.heads, "image_size": size,
                       "patch_size": s.patch_size},
        # generate() starts from bos and stops at sep: [CLS] and [SEP], as the captions are framed in training
        text_config={"vocab_size": len(tokenizer), "hidden_size": s.hidden, "num_hidden_layers": s.layers,
                     "num_attention_heads": s.heads, "intermediate_size": 4 * s.hidden,
                     "max_position_embeddings": 64, "encoder_hidden_size": s.vision_hidden,
                     "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
                     "sep_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model = BlipForConditionalGeneration(config)
    with torch.no_grad():  # (1, 1 + patches, D): the class token's first
        positions = model.vision_model.embeddings.position_embedding
        positions[0, 1:] = sincos_positions(size // s.patch_size, s.vision_hidden)
        positions[0, 0] = 0
    return model, processor


def patch_labels(scenes: list[dict], grid: int):
    """(N, grid * grid) shape and colour class per patch, row-major: 0 where no object's box holds the
    patch centre, else 1 + the index of the smallest such object's shape (SHAPES) and colour (PALETTE)."""
    import torch

    shape_ids = torch.zeros(len(scenes), grid * grid, dtype=torch.long)
    colour_ids = torch.zeros_like(shape_ids)
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    xs, ys = xs.flatten(), ys.flatten()
    for row, s in enumerate(scenes):
        # largest first, so a smaller box painted later wins where two overlap
        for o in sorted(s["objects"], key=lambda o: -(o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1])):
            x0, y0, x1, y1 = o["box"]
            inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            shape_ids[row, inside] = 1 + SHAPES.index(o["name"])
            colour_ids[row, inside] = 1 + list(PALETTE).index(o["color"])
    return shape_ids, colour_ids


class PatchHeads:
    """Training-only linear heads on a ViT's patch tokens that predict each patch's shape and colour
    (patch_labels): the boxes of the teacher set teach a from-scratch ViT what its captions name far
    faster than the captions alone. Not part of the saved model."""

    def __init__(self, dim: int, device: str):
        import torch

        self.shape = torch.nn.Linear(dim, 1 + len(SHAPES)).to(device)
        self.colour = torch.nn.Linear(dim, 1 + len(PALETTE)).to(device)

    def parameters(self):
        return [*self.shape.parameters(), *self.colour.parameters()]

    def loss(self, patches, shape_ids, colour_ids):
        """patches (B, P, D); ids (B, P) -> mean cross-entropy of both heads."""
        import torch.nn.functional as F

        return (F.cross_entropy(self.shape(patches).flatten(0, 1), shape_ids.flatten())
                + F.cross_entropy(self.colour(patches).flatten(0, 1), colour_ids.flatten()))


def train_captioner(settings: CaptionerSettings, captions_json: str, images_dir: str, out_dir: str, *,
                    device: str = "cpu", log=print) -> dict:
    """Train a BLIP captioner into out_dir: next-token loss on [CLS] caption [SEP], plus (weighted by
    patch_supervision) the patch heads' loss on its vision tower."""
    scenes = read_scenes(captions_json)
    model, processor = build_captioner(settings, words(s["caption"] for s in scenes), out_dir)
    pixels = scene_pixels(scenes, images_dir, processor.image_processor)
    text = processor.tokenizer([s["caption"] for s in scenes], padding="longest", return_tensors="pt")
    ids, mask = text["input_ids"], text["attention_mask"]
    shape_ids, colour_ids = patch_labels(scenes, settings.image_size // settings.patch_size)
    heads = PatchHeads(settings.vision_hidden, device)

    def loss_of(batch):
        length = int(mask[batch].sum(1).max())
        x, m = ids[batch, :length].to(device), mask[batch, :length].to(device)
        image = model.vision_model(pixel_values=pixels[batch].to(device)).last_hidden_state  # (B, 1 + P, D)
        caption = model.text_decoder(input_ids=x, attention_mask=m, encoder_hidden_states=image,
                                     labels=x.masked_fill(m == 0, -100), reduction="mean").loss
        parts = {"caption_loss": caption.item()}
        if not settings.patch_supervision:
            return caption, parts
        patch = heads.loss(image[:, 1:], shape_ids[batch].to(device), colour_ids[batch].to(device))
        parts["patch_loss"] = patch.item()
        return caption + settings.patch_supervision * patch, parts

    history = _train(model, settings, len(scenes), loss_of, device, log, "captioner", extra=heads.parameters())
    model.eval().to("cpu").save_pretrained(out_dir)
    return {"images": len(scenes), "vocabulary": len(processor.tokenizer), "history": history,
            "parameters": sum(p.numel() for p in model.parameters())}


# ---- the tagger: SigLIP ----------------------------------------------------------------------

def build_tagger(settings: TaggerSettings, sentences: list[str], out_dir: str):
    """A random SigLIP tagger whose SentencePiece vocabulary is learned from `sentences` (T5's special
    pieces at T5's ids, as SigLIP's English checkpoints have them); processor saved to out_dir.
    (model, processor). The temperature and bias start where SigLIP's do (10, -10)."""
    import torch
    from transformers import (
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
        SiglipTokenizer,
    )

    from teachers.replicas.common import BICUBIC, RESCALE, sentencepiece_model

    spiece = os.path.join(out_dir, "spiece.model")
    with open(spiece, "wb") as f:
        f.write(sentencepiece_model(sentences, vocab_size=96, pad=("<pad>", 0), eos=("</s>", 1), unk=("<unk>", 2)))
    s = settings
    tokenizer = SiglipTokenizer(vocab_file=spiece, model_max_length=s.text_positions)
    size = s.image_size
    image_processor = SiglipImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, resample=BICUBIC, rescale_factor=RESCALE)
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    config = SiglipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": s.text_hidden, "intermediate_size": 4 * s.text_hidden,
                     "num_hidden_layers": s.text_layers, "num_attention_heads": s.heads,
                     "max_position_embeddings": s.text_positions, "projection_size": s.vision_hidden,
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "bos_token_id": None},
        vision_config={"hidden_size": s.vision_hidden, "intermediate_size": 4 * s.vision_hidden,
                       "num_hidden_layers": s.vision_layers, "num_attention_heads": s.heads, "image_size": size,
                       "patch_size": s.patch_size})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model = SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
        model.vision_model.embeddings.position_embedding.weight.copy_(
            sincos_positions(size // s.patch_size, s.vision_hidden))
    return model, processor


def train_tagger(settings: TaggerSettings, captions_json: str, images_dir: str, out_dir: str, *,
                 device: str = "cpu", log=print) -> dict:
    """Train a SigLIP tagger into out_dir: per image, a sigmoid loss against every tag prompt (the
    scene's objects are the positives) and against its batch's captions plus a corrupted copy of
    each (its own caption, and any identical one, positive)."""
    import torch
    import torch.nn.functional as F

    from teachers.tagger import Tagger, TagParams, unused_text_token_ids_unreported

    scenes = read_scenes(captions_json)
    vocab = tag_vocabulary()
    prompts = [settings.prompt.format(name) for _, name in vocab]
    model, processor = build_tagger(settings, [s["caption"] for s in scenes] + prompts, out_dir)
    pixels = scene_pixels(scenes, images_dir, processor.image_processor)
    index = {name: k for k, (_, name) in enumerate(vocab)}
    targets = torch.zeros(len(scenes), len(vocab))
    for row, s in enumerate(scenes):
        for o in s["objects"]:
            targets[row, index[object_tag(o)]] = 1.0
    # The job's own text layout: Tagger.text_inputs (SigLIP: lowercase, padded to the full length, no mask).
    layout = Tagger(model, processor, vocab, TagParams(prompt=settings.prompt, vocab="(training)"), "cpu")
    shape_ids, colour_ids = patch_labels(scenes, settings.image_size // settings.patch_size)
    heads = PatchHeads(settings.vision_hidden, device)
    model.to(device)
    prompt_inputs = {k: v.to(device) for k, v in layout.text_inputs(prompts).items()}
    rng = np.random.default_rng(settings.seed)

    def embed_texts(inputs):
        return F.normalize(model.get_text_features(**inputs).pooler_output, dim=-1)

    def loss_of(batch):
        b = batch.tolist()
        vision = model.vision_model(pixel_values=pixels[batch].to(device))  # what get_image_features pools
        image = F.normalize(vision.pooler_output, dim=-1)
        scale, bias = model.logit_scale.exp(), model.logit_bias
        tag_logits = image @ embed_texts(prompt_inputs).T * scale + bias  # (B, V)
        tag_loss = F.binary_cross_entropy_with_logits(tag_logits, targets[batch].to(device), reduction="sum") / len(b)
        captions = [scenes[i]["caption"] for i in b]
        texts = captions + [corrupt(c, rng) for c in captions]
        text = embed_texts({k: v.to(device) for k, v in layout.text_inputs(texts).items()})
        caption_logits = image @ text.T * scale + bias  # (B, 2B)
        match = torch.tensor([[float(t == c) for t in texts] for c in captions], device=device)
        caption_loss = F.binary_cross_entropy_with_logits(caption_logits, match, reduction="sum") / len(b)
        parts = {"tag_loss": tag_loss.item(), "caption_loss": caption_loss.item()}
        if not settings.patch_supervision:
            return tag_loss + caption_loss, parts
        patch = heads.loss(vision.last_hidden_state, shape_ids[batch].to(device), colour_ids[batch].to(device))
        parts["patch_loss"] = patch.item()
        return tag_loss + caption_loss + settings.patch_supervision * patch, parts

    history = _train(model, settings, len(scenes), loss_of, device, log, "tagger", extra=heads.parameters())
    with unused_text_token_ids_unreported():
        model.eval().to("cpu").save_pretrained(out_dir)
    return {"images": len(scenes), "vocabulary": len(processor.tokenizer), "history": history,
            "parameters": sum(p.numel() for p in model.parameters()), "tags": len(vocab)}


def main(argv: list[str] | None = None) -> int:
    """python -m benchmarks.scene_teachers --captions C.json --images DIR --output ROOT [--kinds ...]:
    train (or find cached) teachers on one set of scenes."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.scene_teachers", description=main.__doc__.split(":")[0])
    ap.add_argument("--captions", required=True, help="a synthetic_scenes captions JSON (the teacher set)")
    ap.add_argument("--images", required=True, help="its images folder")
    ap.add_argument("--output", required=True, help="where teacher folders go (one per kind and digest)")
    ap.add_argument("--kinds", nargs="+", choices=tuple(KINDS), default=list(KINDS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for kind in args.kinds:
        path, record = trained_teacher(kind, KINDS[kind](seed=args.seed), args.captions, args.images, args.output,
                                       device=args.device, log=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"{kind}\t{path}\t{record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
