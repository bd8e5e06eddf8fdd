"""Pieces both teachers share: device and dtype choice."""
from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def pick_device(device: str) -> str:
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), not {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was asked for but this worker has no CUDA device")
    return device


def pick_dtype(device: str):
    """Half precision on GPUs (bf16 where supported), full precision on CPUs."""
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
