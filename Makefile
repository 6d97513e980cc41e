# dicom-archive: `make run` starts the archive with embedded defaults; `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

FUZZ_SECONDS ?= 180
FUZZ_TARGETS ?= pdu describe stow qido search

.PHONY: ui ohif fuzz run install system-deps services services-stop image image-stop cluster cluster-stop test test-fast lint bench bench-query bench-dicomweb clean

# The native core (native/: Rust, PyO3, built by maturin from PyPI) installs into the venv as the
# package dicom-archive-native; cargo is rustup's (~/.cargo/bin; Debian's Rust is too old for PyO3),
# its build directory cached under ~/.cache/dicom-archive/native-target.
export PATH := $(HOME)/.cargo/bin:$(PATH)
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)

$(STAMP): pyproject.toml $(NATIVE_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	CARGO_TARGET_DIR=$(HOME)/.cache/dicom-archive/native-target $(BIN)/pip install -q --force-reinstall --no-deps ./native
	touch $(STAMP)

install: $(STAMP)

# The web UI (ui/: Vite, Preact, TypeScript) built into the package (archive/query/ui/static, not
# committed; the wheel carries it); rebuilt when its sources change. npm's cache: ~/.cache/dicom-archive/npm.
UI_STAMP := archive/query/ui/static/index.html
UI_MODULES := ui/node_modules/.installed
$(UI_MODULES): ui/package.json ui/package-lock.json
	cd ui && npm ci --cache $(HOME)/.cache/dicom-archive/npm --prefer-offline --no-audit --no-fund
	touch $(UI_MODULES)

$(UI_STAMP): $(UI_MODULES) $(shell find ui/src -type f 2>/dev/null) ui/index.html ui/vite.config.ts ui/tsconfig.json
	cd ui && npm run build
	touch $(UI_STAMP)

ui: $(UI_STAMP)

# The OHIF viewer for the real-viewer test (tests/e2e/test_ohif.py): @ohif/app's prebuilt dist/ at
# the version and integrity pinned in tests/ohif/ohif.json, cached under ~/.cache/dicom-archive/ohif.
ohif:
	bash scripts/ohif.sh >/dev/null

run: $(STAMP) $(UI_STAMP)
	$(BIN)/dicom-archive serve

system-deps: $(STAMP)
	bash scripts/system-deps.sh
	bash scripts/install-helm.sh
	bash scripts/install-kube-tools.sh

services: $(STAMP)
	bash scripts/services.sh start

services-stop:
	bash scripts/services.sh stop

# The container image (docs/deploy.md): a private dockerd, a Debian base made with debootstrap
# (cached under ~/.cache/dicom-archive), localhost/dicom-archive:<version>; .image.env says where.
# The web UI is built in the Dockerfile's ui stage (npm ci from ui/package-lock.json; the base is
# the Debian base plus the host's Node.js), not on the host; no Node.js in the image that runs.
image:
	bash scripts/image.sh build

image-stop:
	bash scripts/image.sh stop

# The test cluster (docs/deploy.md): a one-node Kubernetes v1.34 built from the Go module proxy
# (cached under ~/.cache/dicom-archive), the image loaded into it, the backends on its bridge, the
# chart installed; .cluster/env says where. cluster-stop removes all of it.
cluster: $(STAMP)
	bash scripts/cluster.sh up

cluster-stop:
	bash scripts/cluster.sh down

lint: $(STAMP)
	$(BIN)/mypy
	$(BIN)/lint-imports

# The cluster comes up before pytest and goes down after it, also when either fails
# (CLUSTER_KEEP=1 keeps it for another run).
test: $(STAMP) $(UI_STAMP) ohif system-deps services image lint
	trap '[ -n "$(CLUSTER_KEEP)" ] || bash scripts/cluster.sh down' EXIT; \
	  bash scripts/cluster.sh up && $(BIN)/pytest -q -rs --durations=15

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow" tests/unit

bench: $(STAMP) system-deps services
	$(BIN)/python bench/ingest.py

bench-dicomweb: $(STAMP) system-deps
	$(BIN)/python bench/dicomweb.py

bench-query: $(STAMP) services
	$(BIN)/python bench/query.py

# Fuzzing (docs/security.md): each target FUZZ_SECONDS under atheris, niced and memory-bounded;
# crashing inputs land in fuzz/crashes/<target>/. Then schemathesis explores /api/openapi.json.
fuzz: $(STAMP)
	$(BIN)/pip install -q 'atheris>=2.3' 'schemathesis>=4.0'
	for target in $(FUZZ_TARGETS); do \
	  nice -n 19 $(BIN)/python -m fuzz.run $$target --seconds $(FUZZ_SECONDS) || exit 1; \
	done
	FUZZ_EXPLORE=1 nice -n 19 $(BIN)/pytest -q -p no:cacheprovider tests/security/test_openapi_schemathesis.py

clean:
	rm -rf archive-data .pytest_cache
