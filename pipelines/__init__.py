"""Beam jobs and the parts they share: sources, image decoding, model handlers, sinks."""
