PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/bench_render.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache

# Long adversarial run: 50,000 mutated files, and more generated URLs, requests and
# hostile-server cases (see README, Reliability).
.PHONY: fuzz
fuzz: $(STAMP)
	FUZZ_EXAMPLES=50000 ADVERSARIAL_LONG=1 $(BIN)/python -m pytest tests/test_fuzz_files.py tests/test_adversarial_network.py tests/test_adversarial_api.py
