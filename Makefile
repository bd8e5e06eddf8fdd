# Two entry points, each sets up what it needs:
#   make sample   label the bundled sample with the tiny teachers -> out/sample
#   make test     run the test suite
# and: make features (the tiny TEE's region features of the sample -> out/features-sample)
#      make chain    (the whole chain on the sample with tiny models, settings that learn:
#                     label -> features -> corpus -> pre-train -> fine-tune -> caption -> export
#                     to ONNX -> caption on ONNX Runtime)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: sample features chain test venv dataflow-dry-run clean

venv: $(VENV)/.installed

# No pip cache: torch's CUDA wheels would be kept twice (several GB) on a machine whose disk
# may be nearly full; the install reads them from this disk or the registry either way.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -e ".[test]"
	touch $@

sample: venv
	$(PY) -m pipelines.pseudo_label --runner DirectRunner --captioner tiny --tagger tiny --output out/sample --overwrite

features: venv
	$(PY) -m pipelines.extract_features --runner DirectRunner --tee tiny --output out/features-sample --overwrite

# Short runs need a short warmup: under the default 1000 warmup steps the loss would not move.
CHAIN_TRAIN := --batch-size 4 --lr 3e-3 --warmup-steps 3 --num-workers 0 --overwrite

chain: sample features
	$(PY) -m pipelines.build_corpus --runner DirectRunner --labels out/sample/labels \
	  --features out/features-sample/features --output out/corpus-sample --val-fraction 0.2 --overwrite
	$(PY) -m pipelines.train_student --corpus out/corpus-sample --tee tiny --init tiny \
	  --output out/student-sample --max-steps 30 $(CHAIN_TRAIN)
	$(PY) -m pipelines.finetune_caption --init out/student-sample --train out/corpus-sample \
	  --output out/caption-sample --max-steps 30 $(CHAIN_TRAIN)
	$(PY) -m pipelines.caption --checkpoint out/caption-sample data/sample/images
	$(PY) -m pipelines.export --checkpoint out/caption-sample --output out/export-sample --overwrite
	$(PY) -m pipelines.caption --checkpoint out/export-sample data/sample/images

test: venv
	$(PY) -m pytest

dataflow-dry-run: venv
	$(PY) -m pipelines.pseudo_label --runner DataflowRunner --project my-project --region us-central1 \
	  --temp_location gs://example-bucket/tmp --output gs://example-bucket/out \
	  --input gs://example-bucket/images.csv --image-root gs://example-bucket/images \
	  --captioner tiny --tagger tiny --setup_file ./setup.py --dry_run=True --no_auth

clean:
	rm -rf $(VENV) out *.egg-info
