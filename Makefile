# Histo-IA: `make run` starts everything on this machine, `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DJANGO_SETTINGS_MODULE := histoia.settings

.PHONY: run test install install-test migrate demo clean-var static-vendor

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install only when a requirements file changed.
$(VENV)/.installed: requirements.txt $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# Histo-IA itself, installed in place (editable): its pipelines are found through their
# entry points, the built-in ones too (pyproject.toml, predictions/pipelines/__init__.py).
$(VENV)/.installed-code: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The example lab pipeline package, installed in place after Histo-IA, for the tests only (its own
# tests under examples/ and tests/test_example_pipeline.py): `make run` alone keeps the built-in
# pipelines; a lab installs its own packages the same way (docs/pipelines.md).
$(VENV)/.installed-examples: examples/hematoxylin-area/pyproject.toml $(VENV)/.installed-code
	$(BIN)/pip install --quiet --no-deps -e examples/hematoxylin-area
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

# OpenSeadragon for the slide viewer: pinned in package.json (package-lock.json), installed from
# the npm registry and copied into static/vendor/ (git-ignored), served as our own static files.
# Without npm everything else works and the viewer page says how to enable it.
OSD_JS := static/vendor/openseadragon/openseadragon.min.js
static-vendor:
	npm ci --no-audit --no-fund
	rm -rf static/vendor/openseadragon
	mkdir -p static/vendor
	cp -R node_modules/openseadragon/build/openseadragon static/vendor/openseadragon

$(OSD_JS): package-lock.json
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory static-vendor; \
	else echo "npm not found: the slide viewer stays off (install Node.js/npm, then run 'make static-vendor')."; fi

install: $(VENV)/.installed $(VENV)/.installed-code $(OSD_JS)
install-test: $(VENV)/.installed-test $(VENV)/.installed-code $(VENV)/.installed-examples $(OSD_JS)

migrate: install
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --noinput

demo: migrate
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py seed_demo

run: demo
	@echo "Starting web (http://127.0.0.1:$${HISTOIA_PORT:-8000}), cpu worker, gpu worker and beat. Ctrl-C stops them all."
	DEBUG=$${DEBUG:-1} PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start -f Procfile

# DEBUG=1 keeps the test client on plain http (no SSL redirect); Django's test runner still
# runs the views with DEBUG off.
test: install-test
	DEBUG=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

clean-var:
	rm -rf var
