"""Student models: TEE region feature extractor and the MiniVLM fusion transformer.

Empty in this release: the package exists so that setup.py ships the layout the later
stages (feature extraction, student training) fill in.
"""
