"""The commands (python -m pipelines.X, one module each) and what they stand on, by concern:
cli (exit codes, usage errors), data (storage, sources, decoding, annotation readers),
beam (the Beam jobs), train (the shared training loop and its data), eval (metrics and
the data card), infer (captioning files with the student)."""
