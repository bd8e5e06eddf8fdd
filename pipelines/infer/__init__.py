"""Inference with the student over image files."""
