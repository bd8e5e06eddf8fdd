# Two entry points, each sets up what it needs:
#   make sample   label the bundled sample with the tiny teachers -> out/sample
#   make test     run the test suite
# and: make features (the tiny TEE's region features of the sample -> out/features-sample)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: sample features test venv dataflow-dry-run clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

sample: venv
	$(PY) -m pipelines.pseudo_label --runner DirectRunner --captioner tiny --tagger tiny --output out/sample --overwrite

features: venv
	$(PY) -m pipelines.extract_features --runner DirectRunner --tee tiny --output out/features-sample --overwrite

test: venv
	$(PY) -m pytest

dataflow-dry-run: venv
	$(PY) -m pipelines.pseudo_label --runner DataflowRunner --project my-project --region us-central1 \
	  --temp_location gs://example-bucket/tmp --output gs://example-bucket/out \
	  --input gs://example-bucket/images.csv --image-root gs://example-bucket/images \
	  --captioner tiny --tagger tiny --setup_file ./setup.py --dry_run=True --no_auth

clean:
	rm -rf $(VENV) out *.egg-info
