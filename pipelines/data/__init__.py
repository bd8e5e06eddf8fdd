"""Data access: storage through fsspec, image sources (manifests), the one image decoder, annotation readers."""
