PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test docs-test demo serve samples lint bench bench-codecs bench-cold-start clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The README's and QUICKSTART's examples, run (also part of `make test`).
docs-test: $(STAMP)
	$(BIN)/python -m pytest tests/test_docs.py -q -rs

demo: $(STAMP)
	$(BIN)/python demo.py

# The local API with the playground page (GET /) and the sample, until Ctrl-C.
serve: $(STAMP)
	$(BIN)/python demo.py --serve

# pydicom's bundled sample files, for the command-line examples of the README.
samples: $(STAMP)
	$(BIN)/python -c 'import demo, shutil, pathlib; d = pathlib.Path("samples"); d.mkdir(exist_ok=True); [shutil.copy(demo.sample_path(n), d) for n in ("CT_small.dcm", "MR_small.dcm", "examples_ybr_color.dcm")]'
	@echo "samples/: CT_small.dcm (CT), MR_small.dcm (MR), examples_ybr_color.dcm (30-frame US)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/bench_render.py

# Codec targets (README, Performance): against dcmtk, every syntax, thumbnails, peak RSS.
bench-codecs: $(STAMP)
	$(BIN)/python bench/bench_codecs.py --repeat 9

# Cold start from the built python3.12 package, run as the Lambda runtime runs it.
bench-cold-start: $(STAMP)
	$(BIN)/python bench/bench_cold_start.py --runs 9 --runtime python3.12

clean:
	rm -rf $(VENV) out samples temp .pytest_cache .ruff_cache

# Long adversarial run: 50,000 mutated files, and more generated URLs, requests and
# hostile-server cases (see README, Reliability).
.PHONY: fuzz
fuzz: $(STAMP)
	FUZZ_EXAMPLES=50000 ADVERSARIAL_LONG=1 $(BIN)/python -m pytest tests/test_fuzz_files.py \
	    tests/test_adversarial_network.py tests/test_adversarial_api.py \
	    tests/test_adversarial_events.py tests/test_secrets.py
