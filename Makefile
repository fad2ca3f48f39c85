# edgeloop: `make demo` sets up and runs the main job; `make test` runs every check CI runs.
PYTHON ?= python3
VENV ?= .venv
VENV214 ?= .venv-tflite214
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: setup setup-214 demo test lint typecheck pytest pytest-214 mosquitto clean

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e ".[host,dev]"
	# the qat extra, --no-deps: tf-keras would pull `tensorflow` next to tensorflow-cpu
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps "tf-keras==$$($(VENV)/bin/python -c \
	  'import tensorflow as t; print(t.__version__.rsplit(".", 1)[0])').*" \
	  "tensorflow-model-optimization>=0.8" "dm-tree>=0.1.8" "attrs>=18.2"
	touch $@

# tflite-runtime 2.14 needs numpy<2 and cannot load models from newer converters: own venv.
setup-214: $(VENV214)/.installed
$(VENV214)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV214)
	$(VENV214)/bin/pip install $(PIP_FLAGS) -e ".[tflite-runtime,dev]" "numpy<2"
	touch $@

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto and mosquitto-clients (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; }

demo: setup mosquitto
	$(VENV)/bin/edge-deploy demo

lint: setup
	$(VENV)/bin/ruff check agent deploy tests
	$(VENV)/bin/ruff format --check agent deploy tests
	$(VENV)/bin/mypy

pytest: setup mosquitto
	$(VENV)/bin/python -m pytest

pytest-214: setup-214 mosquitto
	EDGELOOP_RUNTIME=tflite-runtime $(VENV214)/bin/python -m pytest -m runtime

test: lint pytest pytest-214

clean:
	rm -rf $(VENV) $(VENV214)
