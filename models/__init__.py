"""Student models (TEE region feature extractor, MiniVLM fusion transformer)."""
