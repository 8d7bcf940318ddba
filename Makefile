# Two entry points: `make demo` (set up, train the demo comparison, write the report) and
# `make test` (set up, run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned torch installs from a local CPU build where one is provided and keeps the setup
# fast; any torch >= 2.1 works: `make TORCH=torch demo` takes the newest.
TORCH ?= torch==2.13.0

.PHONY: demo test lint data setup clean results-quick
.SECONDARY:

demo: setup data
	$(BIN)/stochnorm demo --out runs/demo

test: setup data
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# Fashion-MNIST: found in $STOCHNORM_DATA, ~/.cache/stochnorm or Debian's package
# dataset-fashion-mnist (installed here with apt when run as root); else downloaded.
data: setup
	@$(BIN)/stochnorm data fashion-mnist 2>/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null && \
	    $(BIN)/stochnorm data fashion-mnist; } || \
	  $(BIN)/stochnorm data fashion-mnist --download

clean:
	rm -rf $(VENV) runs .pytest_cache

# The committed quick-profile baselines (results/quick): the paper's learning-rate search
# per normalization, then a 60-epoch run with the rate found, then the report.
QUICK := results/quick
$(QUICK)/lr-find-%.json: | setup data
	$(BIN)/stochnorm lr-find --profile quick --norm $* --no-progress --out $@

$(QUICK)/%/metrics.json: $(QUICK)/lr-find-%.json
	if [ -f $(QUICK)/$*/checkpoint.pt ]; then \
	  $(BIN)/stochnorm train --out $(QUICK)/$* --resume --no-progress; \
	else \
	  $(BIN)/stochnorm train --profile quick --norm $* --no-progress --out $(QUICK)/$* \
	    --lr $$($(BIN)/python -c "import json; print(json.load(open('$<'))['lr'])"); \
	fi

results-quick: $(QUICK)/batch/metrics.json $(QUICK)/none/metrics.json
	$(BIN)/stochnorm report $(QUICK)/batch $(QUICK)/none --out $(QUICK) \
	  --title "Quick profile: batch norm vs no normalization (Fashion-MNIST)"
