"""The Beam jobs (labeling, feature extraction, the corpus join) and the stages, handlers and sinks they share."""
