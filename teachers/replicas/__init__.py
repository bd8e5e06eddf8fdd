"""Replica builders, one module per family; importing this package registers them all."""
from teachers.replicas import blip, clip, git, siglip  # noqa: F401
from teachers.replicas import blip2, florence2, siglip2, smolvlm  # noqa: F401
