"""Teacher models: registry of tiny variants, one loader, the captioner and the tagger."""
from schemas.vocab import DEFAULT_VOCAB, load_vocab, read_vocab
from teachers import replicas  # noqa: F401  (registers every tiny family)
from teachers.captioner import (
    DEFAULT_CAPTIONER,
    Captioner,
    CaptionParams,
    caption_params_for,
    check_remote_code,
    load_captioner,
)
from teachers.loading import TeacherRef, TeacherUnavailable, default_cache_dir, describe, resolve
from teachers.registry import register_tiny, tiny_families
from teachers.tagger import (
    DEFAULT_TAGGER,
    MEASURES,
    RerankParams,
    Tagger,
    TagParams,
    load_tagger,
    rerank_captions,
    similarity_measure,
)

__all__ = [
    "DEFAULT_CAPTIONER", "DEFAULT_TAGGER", "DEFAULT_VOCAB", "MEASURES", "CaptionParams", "Captioner",
    "caption_params_for", "check_remote_code",
    "RerankParams", "TagParams", "Tagger", "TeacherRef", "TeacherUnavailable", "default_cache_dir", "describe",
    "load_captioner", "load_tagger", "load_vocab", "read_vocab", "register_tiny", "rerank_captions", "resolve",
    "similarity_measure", "tiny_families",
]
