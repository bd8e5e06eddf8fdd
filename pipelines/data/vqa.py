"""VQA v2 questions and answers: reading, the standard answer normalisation, soft scores.

Two layouts are read:
- the official pair: a questions JSON (`{"questions": [{"question_id", "image_id",
  "question"}]}`) and an annotations JSON (`{"annotations": [{"question_id", "image_id",
  "answers": [{"answer", ...}] x 10, "multiple_choice_answer", "answer_type", ...}]}`);
  without annotations (the test split) the questions have no answers;
- JSON Lines, one question per line with its answers inline (`{"question_id", "image_id",
  "question", "answers": [...], "multiple_choice_answer", "answer_type"}`; answers as
  strings or {"answer": ...}).

Each question's `multiple_choice_answer` (VQA v2: the most frequent of its human answers)
is the record's field; where that is absent, it is computed as VQA defines it: the most
frequent of the normalised human answers, ties broken by text. The answer vocabulary
(`answer_vocabulary`) counts it, as VQA v2 practice does (bottom-up-attention-vqa, OSCAR,
VinVL: answers that are the multiple_choice_answer of >= 9 train+val questions, 3,129).

Image ids become strings (VQA's are COCO's ints), like COCO captions'. A record missing a
field, or a line that is not JSON, is counted in `VQAStats` and skipped, never fatal.

The normalisation and the accuracy are the official evaluation's (vqaEval.py): lower
case, punctuation dropped or spaced, number words to digits, articles dropped,
contractions restored; a predicted answer's accuracy is, over the 10 leave-one-out
subsets of the 10 human answers, the mean of min(matches / 3, 1). Training targets are the
same number for every answer in the vocabulary (soft scores), so the loss aims at the metric.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from pipelines.data import storage

# ---- the official normalisation (vqaEval.py) --------------------------------------------

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official expression, kept for identical results
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!"]


def _punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or re.search(COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, re.UNICODE)


def _digits_and_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBERS.setdefault(word, word) if word in NUMBERS else word
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The official evaluation's processing of a predicted answer: "Two dogs!" -> "2 dogs", "the cat" -> "cat"."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text))


def _leave_one_out(predicted: str, answers: list[str]) -> float:
    total = 0.0
    for i in range(len(answers)):
        matches = sum(1 for j, a in enumerate(answers) if j != i and a == predicted)
        total += min(1.0, matches / 3)
    return total / len(answers) if answers else 0.0


def answer_accuracy(predicted: str, answers: list[str]) -> float:
    """The VQA accuracy of one predicted answer against the human answers, as vqaEval.py computes
    it: the prediction normalised, the human answers only stripped of punctuation and only
    where they disagree (the released annotations are normalised already), then the mean over
    the leave-one-out subsets of min(matches / 3, 1)."""
    gts = [_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    return _leave_one_out(normalize_answer(predicted), gts)


def soft_scores(answers: list[str]) -> dict[str, float]:
    """Every distinct normalised human answer -> its leave-one-out accuracy: the training target
    (both sides normalised, so "two" and "2" are one answer)."""
    gts = [normalize_answer(a) for a in answers]
    return {a: _leave_one_out(a, gts) for a in dict.fromkeys(gts) if a}


# ---- reading -------------------------------------------------------------------------------

@dataclass
class Question:
    question_id: str
    image_id: str
    question: str
    answers: list[str] = field(default_factory=list)  # raw human answers (10 in VQA v2); [] without annotations
    answer_type: str | None = None  # VQA v2: "yes/no", "number", "other"
    question_type: str | None = None  # VQA v2: the question's first words, e.g. "what color is the"
    # VQA v2's "multiple_choice_answer": the most frequent human answer. None given, it is
    # computed from `answers` (majority_answer); None without answers.
    multiple_choice_answer: str | None = None

    def __post_init__(self):
        if self.multiple_choice_answer is None:
            self.multiple_choice_answer = majority_answer(self.answers)


@dataclass
class VQAStats:
    questions: int = 0  # kept
    malformed: int = 0  # records (or JSONL lines) missing a field, of a wrong type, or not JSON
    without_annotation: int = 0  # questions the annotations file has no entry for (kept, no answers)
    annotations_without_question: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def majority_answer(answers: list[str]) -> str | None:
    """The most frequent of the normalised human answers, ties broken by text (the smallest):
    a question's multiple_choice_answer as VQA defines it, for records without that field.
    None when no answer normalises to anything."""
    counts = Counter(a for a in map(normalize_answer, answers) if a)
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else None


_MISSING = object()


def _choice(rec: dict):
    """A record's multiple_choice_answer: the text, None when absent or blank (computed from the
    answers), _MISSING when of a wrong type (a malformed record)."""
    value = rec.get("multiple_choice_answer")
    if value is None:
        return None
    if not isinstance(value, str):
        return _MISSING
    return value if value.strip() else None


def _answers(raw) -> list[str] | None:
    if not isinstance(raw, list):
        return None
    out = [a.get("answer") if isinstance(a, dict) else a for a in raw]
    return out if all(isinstance(a, str) for a in out) else None


def _question(rec, stats: VQAStats) -> Question | None:
    if not isinstance(rec, dict) or not isinstance(rec.get("question"), str) or not rec["question"].strip() \
            or rec.get("question_id") is None or rec.get("image_id") is None:
        stats.malformed += 1
        return None
    answers = _answers(rec.get("answers", []))
    choice = _choice(rec)
    if answers is None or choice is _MISSING:
        stats.malformed += 1
        return None
    return Question(str(rec["question_id"]), str(rec["image_id"]), rec["question"].strip(), answers,
                    rec.get("answer_type"), rec.get("question_type"), choice)


def read_vqa(questions: str, annotations: str | None = None) -> tuple[list[Question], VQAStats]:
    """Questions (with their answers where annotated) from the official pair or one JSONL file."""
    stats = VQAStats()
    if questions.endswith(".jsonl"):
        if annotations:
            raise ValueError(f"{questions} is JSON Lines with answers inline: no annotations file goes with it")
        out = []
        for line in storage.read_text(questions).splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                stats.malformed += 1
                continue
            q = _question(rec, stats)
            if q is not None:
                out.append(q)
        stats.questions = len(out)
        return out, stats
    data = _json(questions)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{questions} is not a VQA questions file: no 'questions' list")
    out = [q for q in (_question(rec, stats) for rec in data["questions"]) if q is not None]
    if annotations:
        ann = _json(annotations)
        if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
            raise ValueError(f"{annotations} is not a VQA annotations file: no 'annotations' list")
        by_id = {}
        for rec in ann["annotations"]:
            answers = _answers(rec.get("answers")) if isinstance(rec, dict) else None
            choice = _choice(rec) if answers is not None else _MISSING
            if choice is _MISSING or rec.get("question_id") is None:
                stats.malformed += 1
                continue
            by_id[str(rec["question_id"])] = (answers, rec.get("answer_type"), rec.get("question_type"),
                                              choice if choice is not None else majority_answer(answers))
        for q in out:
            found = by_id.pop(q.question_id, None)
            if found is None:
                stats.without_annotation += 1
            else:
                q.answers, q.answer_type, q.question_type, q.multiple_choice_answer = found
        stats.annotations_without_question = len(by_id)
    stats.questions = len(out)
    return out, stats


def _json(path: str):
    try:
        return json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def answer_vocabulary(questions: list[Question], min_count: int = 9) -> list[str]:
    """The classifier's outputs: the normalised answers that are the multiple_choice_answer of
    at least `min_count` of the questions, most frequent first (ties by text). VQA v2 practice
    (bottom-up-attention-vqa's compute_softscore, OSCAR, VinVL) counts over the train and val
    questions with min_count 9: 3,129 answers. Answers only some annotators gave (never a
    question's multiple_choice_answer) are not counted; a question id is counted once (as
    compute_softscore does), and a question with neither answers nor multiple_choice_answer
    (the test split) not at all."""
    if isinstance(min_count, bool) or not isinstance(min_count, int):
        raise TypeError(f"the minimum answer count must be an int, not {min_count!r}")
    if min_count < 1:
        raise ValueError(f"the minimum answer count (--min-answer-count) must be >= 1, not {min_count}")
    choices: dict[str, str] = {}
    for q in questions:
        if q.multiple_choice_answer is not None:
            choices.setdefault(q.question_id, q.multiple_choice_answer)
    counts = Counter(normalize_answer(a) for a in choices.values())
    counts.pop("", None)
    return [a for a, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
