# edge_ai: `make serve` runs the node on its embedded defaults; `make test` runs the test suite.
# Both set up everything they need on a fresh Debian 12 machine with Python 3.11 (as root).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEBS   := dcmtk orthanc orthanc-dicomweb dicom3tools libgdcm-tools systemd libsystemd-dev pkg-config \
          chromium rsyslog rsyslog-gnutls gnutls-bin

.PHONY: serve test lint system-deps clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,systemd]'
	touch $@

# torch for scripts/retrain.py and its test (the `train` extra; never a runtime dependency): the pinned CPU build
$(BIN)/.train: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test,systemd,train]'
	touch $@

# DCMTK (storescu/echoscu/storescp), GDCM (gdcmscu), Orthanc with its DICOMweb plugin (a real PACS and
# sender) and dciodvfy are the tests' peers; Chromium drives the dashboard tests; rsyslog with gnutls is the
# audit record repository; systemd provides systemd-analyze (tests/system/test_deploy.py); libsystemd-dev
# and pkg-config build systemd-python (the `systemd` extra).
system-deps:
	@if ! dpkg -s $(DEBS) >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS); \
	fi

# dcmjs-dimse (JavaScript), an independent DICOM sender for the interop tests, from its committed lock file
JS     := tests/interop/js
$(JS)/node_modules/.installed: $(JS)/package.json $(JS)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

serve: $(BIN)/.installed
	$(BIN)/edge-ai serve --config config/edge-ai.yaml

test: system-deps $(BIN)/.installed $(BIN)/.train $(JS)/node_modules/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check edge_ai tests scripts

clean:
	rm -rf $(VENV) var $(JS)/node_modules
