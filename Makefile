# edge_ai: `make serve` runs the node on its embedded defaults; `make test` runs the test suite.
# Both set up everything they need on a fresh Debian 12 machine with Python 3.11 (as root).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEBS   := dcmtk orthanc dicom3tools systemd

.PHONY: serve test lint system-deps clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# DCMTK (storescu/echoscu/storescp), Orthanc (a real PACS) and dciodvfy are the tests' peers;
# systemd provides systemd-analyze, which gates the hardened unit (tests/system/test_deploy.py).
system-deps:
	@if [ ! -x /usr/bin/storescu ] || [ ! -x /usr/sbin/Orthanc ] || [ ! -x /usr/bin/dciodvfy ] \
	  || [ ! -x /usr/bin/systemd-analyze ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS); \
	fi

serve: $(BIN)/.installed
	$(BIN)/edge-ai serve --config config/edge-ai.yaml

test: system-deps $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check edge_ai tests scripts

clean:
	rm -rf $(VENV) var
