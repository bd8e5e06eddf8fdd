"""Evaluation: detection, caption and tag metrics, and the data card's statistics and plots."""
