"""Teacher models: registry of tiny variants, one loader, the captioner and the tagger."""
from teachers.captioner import DEFAULT_CAPTIONER, CaptionParams, Captioner, load_captioner
from teachers.loading import TeacherRef, TeacherUnavailable, default_cache_dir, describe, resolve
from teachers.registry import register_tiny, tiny_families
from teachers.tagger import DEFAULT_TAGGER, DEFAULT_VOCAB, TagParams, Tagger, load_tagger, load_vocab, read_vocab

__all__ = [
    "DEFAULT_CAPTIONER", "DEFAULT_TAGGER", "DEFAULT_VOCAB", "CaptionParams", "Captioner", "TagParams", "Tagger",
    "TeacherRef", "TeacherUnavailable", "default_cache_dir", "describe", "load_captioner", "load_tagger",
    "load_vocab", "read_vocab", "register_tiny", "resolve", "tiny_families",
]
