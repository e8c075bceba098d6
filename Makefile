# The two commands of the README:
#   make demo   - install, fetch ML-100K, train and evaluate the ranker, print the results table
#   make test   - install, lint, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# llama-cpp-python has no Linux wheel on PyPI: build it once (library only, no llava/tools/examples/tests),
# keep the wheel in a cache folder keyed by its version and build flags, and install from it afterwards.
# GGML_NATIVE=OFF: a -march=native build segfaults on Intel AMX CPUs (GCC 12 miscompiles the AMX
# tile-config load), and a wheel built on one machine must run on any x86-64 CI machine (AVX2 baseline).
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
LLAMA_KEY := $(shell printf '%s %s' '$(LLAMA_CPP)' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-16)
WHEELS ?= $(HOME)/.cache/reaseq/wheels/llama-$(LLAMA_KEY)

.PHONY: setup demo test lint clean jvm tools images rehearse llama-avx512

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found %s); install it and re-run, or pass PYTHON=/path/to/python3.11" % sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || { echo "building $(LLAMA_CPP) once into $(WHEELS)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(PY) -m pip wheel -q --disable-pip-version-check --no-cache-dir --no-deps $(LLAMA_CPP) -w $(WHEELS); }
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt --find-links $(WHEELS) -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# Optional, for long knowledge builds (`reaseq knowledge build --llama avx512`): the same llama-cpp with the
# AVX-512, VBMI, VNNI and BF16 kernels compiled in by explicit ISA flags (no -march=native, AMX off). It runs
# only on CPUs with those instructions (the build checks /proc/cpuinfo first); tests and CI never use it.
LLAMA_AVX512_CMAKE_ARGS := $(LLAMA_CMAKE_ARGS) -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
  -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON
LLAMA_AVX512_KEY := $(shell printf '%s %s' '$(LLAMA_CPP)' '$(LLAMA_AVX512_CMAKE_ARGS)' | sha256sum | cut -c1-16)
LLAMA_AVX512_WHEELS := $(HOME)/.cache/reaseq/wheels/llama-avx512-$(LLAMA_AVX512_KEY)
LLAMA_AVX512_SITE := $(HOME)/.cache/reaseq/llama-avx512/site

llama-avx512: setup
	@ls $(LLAMA_AVX512_WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || { echo "building the AVX-512 $(LLAMA_CPP) once into $(LLAMA_AVX512_WHEELS)"; \
	  CMAKE_ARGS="$(LLAMA_AVX512_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(PY) -m pip wheel -q --disable-pip-version-check --no-cache-dir --no-deps $(LLAMA_CPP) -w $(LLAMA_AVX512_WHEELS); }
	rm -rf $(LLAMA_AVX512_SITE)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --target $(LLAMA_AVX512_SITE) $(LLAMA_AVX512_WHEELS)/llama_cpp_python-0.3.36-*.whl
	@echo "installed in $(LLAMA_AVX512_SITE): reaseq knowledge build --llama avx512"

# Resolve the pinned JVM jars (Kafka broker, Flink Kafka connector) into ~/.cache/reaseq/jvm once.
jvm: setup
	$(PY) -m streaming.jvm_deps

# Pinned deploy/monitoring checkers (kustomize, kubeconform, prometheus + promtool) into ~/.cache/reaseq/tools.
tools:
	deploy/tools/install.sh

# The Flink and Ray images, built here with buildah on a debootstrapped Debian 12 (deploy/images.py); an image
# whose inputs did not change is not rebuilt. The Ray image bakes in the trained artifacts (make demo).
images: setup jvm tools
	$(VENV)/bin/reaseq deploy images

# Run the job, Serve and the LLM weights step from the rendered manifests inside the images (deploy/rehearse.py).
rehearse: images
	$(VENV)/bin/reaseq deploy rehearse

demo: setup jvm
	$(VENV)/bin/reaseq demo

test: setup jvm tools
	$(PY) -m deploy.images --available
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .cache artifacts
