"""Replica builders, one module per family; importing this package registers them all."""
from teachers.replicas import blip, blip2, clip, florence2, git, siglip, siglip2, smolvlm  # noqa: F401  # noqa: F401
