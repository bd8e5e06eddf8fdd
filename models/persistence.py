"""One on-disk format for every model here: a directory with config.json + model.safetensors.

Local paths and fsspec URLs (gs://, s3://) alike; safetensors only (no pickles).
"""
from __future__ import annotations

import json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def write_model(directory: str, config: dict, state: dict, metadata: dict | None = None) -> None:
    import fsspec
    from safetensors.torch import save

    fs, root = fsspec.core.url_to_fs(directory)
    fs.makedirs(root, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with fs.open(f"{root}/{WEIGHTS_NAME}", "wb") as f:
        f.write(save(tensors, metadata={"format": "pt", **(metadata or {})}))
    with fs.open(f"{root}/{CONFIG_NAME}", "w") as f:
        json.dump(config, f, indent=2)


def read_model(directory: str, what: str) -> tuple[dict, dict]:
    """(config dict, state dict) of a saved model; FileNotFoundError naming `what` if it is not one."""
    import fsspec
    from safetensors.torch import load

    fs, root = fsspec.core.url_to_fs(directory)
    try:
        with fs.open(f"{root}/{CONFIG_NAME}", "r") as f:
            config = json.load(f)
        with fs.open(f"{root}/{WEIGHTS_NAME}", "rb") as f:
            state = load(f.read())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{directory} is not a saved {what} (needs {CONFIG_NAME} and {WEIGHTS_NAME})") from e
    return config, state
