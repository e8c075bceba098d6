# The two commands of the README:
#   make demo   - install, fetch ML-100K, train and evaluate the ranker, print the results table
#   make test   - install, lint, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint clean jvm tools

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found %s); install it and re-run, or pass PYTHON=/path/to/python3.11" % sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# Resolve the pinned JVM jars (Kafka broker, Flink Kafka connector) into ~/.cache/reaseq/jvm once.
jvm: setup
	$(PY) -m streaming.jvm_deps

# Pinned deploy/monitoring checkers (kustomize, kubeconform, prometheus + promtool) into ~/.cache/reaseq/tools.
tools:
	deploy/tools/install.sh

demo: setup jvm
	$(VENV)/bin/reaseq demo

test: setup jvm tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .cache artifacts
