"""Training: the shared loop, resumable data streams, the shared trainer flags, and each trainer's data."""
