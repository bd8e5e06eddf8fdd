"""The student: the TEE region feature extractor (tee.py, on bifpn.py), the MiniVLM fusion
transformer with its pre-training heads and registry (minivlm.py), caption decoding
(captioning.py; the search itself, in NumPy, in decoding.py), the ONNX export (export.py)
and its torch-free runtime (runtime.py), and the one on-disk format they share
(persistence.py)."""
