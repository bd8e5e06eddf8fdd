"""A dataset card for every output folder: README.md with a YAML `configs:` block, so that
`datasets.load_dataset(DIR)` (Hugging Face datasets) opens a labeling run, a features run
or a corpus as it is, and a person reading the folder learns what made it.

    configs:                       the Hub's "manual configuration" of data files
    - config_name: default         the job's own table (labels, features) or the corpus
      data_files:
      - split: train
        path: labels/*.parquet     committed parts only: parts being written never match
    - config_name: failures        the images that failed, when there are any

The folders our commands read stay as they are; the card only describes them. It is
written when a run finishes (with its counts) and replaced by the next run into the folder.
"""
from __future__ import annotations

import json

from pipelines.data import storage

CARD_NAME = "README.md"
# Open Images' images are CC BY 2.0 (each row keeps its own license, author and page);
# the teachers' outputs follow the teachers' licenses.
ATTRIBUTION = ("Images keep their own licenses: every row carries the image's `license`, `author` and "
               "`original_url` where the input gave them (Open Images: CC BY 2.0, attribute the author). "
               "Captions, tags and features are model outputs; their use follows the licenses of the models "
               "named above.")

NO_ATTRIBUTION = ("Rows name their image (`image_id`, `source_uri`) but not its license: the input and the "
                  "labels of the same images carry `license`, `author` and `original_url` (Open Images: CC BY 2.0, "
                  "attribute the author). Model outputs follow the licenses of the models named above.")


def with_tiny_note(models: list[str]) -> list[str]:
    """The card's "made by" lines, and a plain warning when a tiny random test model made the rows."""
    if any("tiny-random" in line for line in models):
        return [*models, "- Made by tiny random test models (`tiny-random`): the rows show the plumbing works, "
                         "they are not real labels."]
    return models


def _quoted(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML scalar, whatever it holds


def render(title: str, configs: dict[str, dict[str, str]], lines: list[str], tags: tuple[str, ...] = ()) -> str:
    """The card's text. configs: config name -> {split: glob relative to the folder}; the first is the default."""
    if not configs:
        raise ValueError("a dataset card needs at least one config")
    yaml = ["---", f"pretty_name: {_quoted(title)}", "tags:", *(f"- {_quoted(t)}" for t in (TAG, *tags))]
    yaml.append("configs:")
    for i, (name, splits) in enumerate(configs.items()):
        yaml.append(f"- config_name: {'default' if i == 0 else name}")
        yaml.append("  data_files:")
        for split, glob in splits.items():
            yaml += [f"  - split: {split}", f"    path: {_quoted(glob)}"]
    yaml.append("---")
    return "\n".join([*yaml, "", f"# {title}", "", *lines, ""])


TAG = "minivlm"  # every card of ours carries it: how a README.md of ours is told from a user's


def remove(output: str) -> bool:
    """Remove OUTPUT/README.md if it is a card of ours (--overwrite); a user's own README stays."""
    path = storage.join(output, CARD_NAME)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return False
    if not (text.startswith("---\n") and f"- {_quoted(TAG)}\n" in text.split("\n---\n", 1)[0]):
        return False
    storage.remove(path)
    return True


def write(output: str, text: str) -> str:
    """OUTPUT/README.md (local, gs://, s3://); returns its path."""
    path = storage.join(output, CARD_NAME)
    storage.write_text(path, text)
    return path
