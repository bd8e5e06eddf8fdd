"""Pieces both teachers share: device, dtype and attention choice."""
from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Model families (config.json model_type) whose teachers run in bfloat16 and float16 on a
# CPU: each is run that way in tests/test_teacher_families.py. On a CPU, half precision is
# refused for any other family (its kernels may be missing there), not discovered per image.
CPU_HALF_FAMILIES = frozenset({"blip", "blip-2", "clip", "florence2", "git", "idefics3", "siglip", "siglip2"})


def pick_device(device: str) -> str:
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), not {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was asked for but this worker has no CUDA device")
    return device


def pick_dtype(device: str, dtype: str = "auto"):
    """The torch dtype for `dtype` on `device` (a picked device, not "auto").

    auto: bfloat16 on GPUs that run it natively (compute capability 8.0 and up: A100, L4,
    H100), float16 on older ones (T4, V100: they only emulate bfloat16, slowly), float32
    on CPUs.
    """
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if not device.startswith("cuda"):
        return torch.float32
    with torch.cuda.device(torch.device(device)):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def dtype_name(dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (as the --dtype flag spells it)."""
    return str(dtype).removeprefix("torch.")


def check_dtype(device: str, dtype: str, model_type: str) -> None:
    """Refuse half precision on a CPU for a family not known to run there (one-line ValueError).

    `device` is a picked device: "auto" resolves on the machine that asks, so a launcher
    without a GPU checks as a CPU worker would (pass --device cuda for GPU workers).
    """
    if dtype in ("bfloat16", "float16") and not device.startswith("cuda") and model_type not in CPU_HALF_FAMILIES:
        raise ValueError(f"--dtype {dtype} on a CPU is not supported for {model_type or 'this'} models (verified "
                         f"for {', '.join(sorted(CPU_HALF_FAMILIES))}); use --dtype float32, or --device cuda")


def check_teacher_dtype(ref, device: str, dtype: str, cache_dir: str | None = None) -> None:
    """`check_dtype` for the teacher reference `ref` (a teachers.TeacherRef), whose family
    is read from its config.json only when it matters (half precision on a CPU)."""
    if dtype in ("bfloat16", "float16") and not device.startswith("cuda"):
        from teachers.loading import model_config

        check_dtype(device, dtype, str(model_config(ref, cache_dir=cache_dir).get("model_type", "")))


def use_sdpa(model) -> str | dict:
    """Run `model` with PyTorch's scaled-dot-product attention where its class supports
    it, else with eager attention; returns what it runs (see `attention_of`).

    transformers loads SDPA by default where a class declares it, so this mostly
    confirms; a class that does not (BLIP, GIT) stays eager as loaded.
    """
    current = attention_of(model)
    if current == "sdpa" or not getattr(model, "_supports_sdpa", False):
        return current
    try:
        model.set_attn_implementation("sdpa")
    except (ValueError, ImportError, NotImplementedError):  # one of its parts refuses SDPA
        model.set_attn_implementation("eager")
    return attention_of(model)


def attention_of(model) -> str | dict:
    """The attention implementation `model` runs: one name, or per part when they differ
    ({"": top level, "vision_config": ..., ...})."""
    config = model.config
    found = {"": config._attn_implementation}
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if sub is not None:
            found[key] = sub._attn_implementation
    names = set(found.values())
    return names.pop() if len(names) == 1 else found
