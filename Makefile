# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The local CPU build; on a GPU machine with internet this installs the CUDA build of the same release.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint docs bench gallery clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The bundled demo: stylizes a photo shipped in the package with Starry Night, writes nst-demo.png.
demo: $(STAMP)
	$(BIN)/nst stylize

lint: $(STAMP)
	$(BIN)/ruff check .

# The documentation site (docs/, mkdocs.yml) into build/site; --strict: a broken link or an unlisted page fails.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir build/site

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mkdocs build --strict --site-dir build/site
	$(BIN)/python -m pytest -q

# The gallery (docs/gallery.md, docs/gallery/*.jpg): one picture per capability, from the bundled images.
gallery: $(STAMP)
	$(BIN)/python scripts/gallery.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_lossnet.py
	$(BIN)/python benchmarks/bench_runtime.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
