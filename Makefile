# Two entry points: `make demo` (set up, train the demo comparison, write the report) and
# `make test` (set up, run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned torch installs from a local CPU build where one is provided and keeps the setup
# fast; any torch >= 2.1 works: `make TORCH=torch demo` takes the newest.
TORCH ?= torch==2.13.0

.PHONY: demo test lint data setup clean results-quick results-fig3 results-table1 \
  results-reproduce results-bayes-screen results-long FORCE
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

# Committed quick-profile runs (results/quick/NAME): the paper's learning-rate search per
# training case, a 60-epoch run with the rate found, then a report. NAME is a norm, with
# "-proj" for projection onto ||w|| = 1 (e.g. batch, none, weight-proj, analytic-proj).
# Suffixes: "-bnlike" adds BN-like noise with the sigmas measured on the quick BN run,
# "-bayes" learned scale noise (e.g. analytic-proj-bayes); population norm takes gamma decay
# GAMMA_DECAY, and "-detached" makes its statistics constants in the backward pass; "-fN"
# steps the learned noise at N times the learning rate (e.g. analytic-proj-bayes-f30).
QUICK := results/quick
GAMMA_DECAY := 1e-4
BN_NOISE := results/bn-noise/bn-noise.json
quick_flags = --norm $(firstword $(subst -, ,$(1))) $(if $(findstring -proj,$(1)),--project) \
  $(if $(findstring population,$(1)),--gamma-decay $(GAMMA_DECAY)) \
  $(if $(findstring -detached,$(1)),--no-population-gradient) \
  $(if $(findstring -bnlike,$(1)),--noise bn-like --noise-from $(BN_NOISE)) \
  $(if $(findstring -bayes,$(1)),--noise bayes) \
  $(patsubst f%,--noise-lr-factor %,$(filter f%,$(subst -, ,$(1))))

# $(call train_or_resume,DIR,FLAGS,LR_JSON): continue the run in DIR if it has a checkpoint,
# else start it with FLAGS at the learning rate LR_JSON's search found.
train_or_resume = if [ -f $(1)/checkpoint.pt ]; then \
	  $(BIN)/stochnorm train --out $(1) --resume --no-progress; \
	else \
	  $(BIN)/stochnorm train --profile quick $(2) --no-progress --out $(1) \
	    --lr $$($(BIN)/python -c "import json; print(json.load(open('$(3)'))['lr'])"); \
	fi

$(QUICK)/lr-find-%.json: | setup data
	$(BIN)/stochnorm lr-find --profile quick $(call quick_flags,$*) --no-progress --out $@

# A run is always visited: `train --resume` continues an interrupted run and leaves a
# finished one as it is (file times after a clone say nothing about which runs are done).
$(QUICK)/%/metrics.json: FORCE | $(QUICK)/lr-find-%.json
	$(call train_or_resume,$(QUICK)/$*,$(call quick_flags,$*),$|)

BASELINES := batch none
results-quick: $(BASELINES:%=$(QUICK)/%/metrics.json)
	$(BIN)/stochnorm report $(BASELINES:%=$(QUICK)/%) --out $(QUICK) \
	  --title "Quick profile: batch norm vs no normalization (Fashion-MNIST)"

# Main paper Fig. 3: each normalization with and without projection.
# (population-detached, constant statistics in the backward pass, is trained beside them and
# left out of the plot, where its loss of about 1.7 would flatten every other curve.)
FIG3 := batch batch-proj analytic-proj weight-proj analytic weight population population-proj
results-fig3: $(FIG3:%=$(QUICK)/%/metrics.json) $(QUICK)/population-detached/metrics.json
	$(BIN)/stochnorm report $(FIG3:%=$(QUICK)/%) --out $(QUICK)/fig3 \
	  --title "Quick profile: normalizations with and without projection (Fashion-MNIST)"

# The main paper's Table 1: each run evaluated (single pass, MC-10, MC-30, error-coverage,
# Gaussian noise and FGSM on 2,000 test images); -f30: the learned noise free to move.
TABLE1 := batch batch-proj weight-proj-bnlike analytic-proj-bnlike weight-proj-bayes \
  analytic-proj-bayes analytic-proj-bayes-f30
$(QUICK)/%/evaluation.json: $(QUICK)/%/metrics.json
	$(BIN)/stochnorm evaluate $(QUICK)/$* --samples 10 30

results-table1: $(TABLE1:%=$(QUICK)/%/evaluation.json)
	$(BIN)/stochnorm report $(TABLE1:%=$(QUICK)/%) --out $(QUICK)/table1 \
	  --title "Quick profile: the main paper's Table 1 on Fashion-MNIST"

# Where learned noise helps: analytic norm + projection at the quick data and width for 20
# epochs (rate falling to 0.1x after 10), at the rate lr-find chose for the 60-epoch Bayes
# run. Case sS-fF[-kK]: learned noise from sigma_S = S, its parameters stepping at F x the
# rate[, KL term weighted by K]; case none: no noise (the reference).
SCREEN := $(QUICK)/bayes-screen
SCREEN_CASES := none s0.1-f1 s0.3-f1 s0.1-f30 s0.3-f30 s0.1-f100 s0.03-f30 s0.1-f30-k0 \
  s0.1-f30-k10 s0.1-f30-k100 s0.03-f10
screen_flags = $(if $(filter none,$(1)),,--noise bayes \
  --sigma-s $(patsubst s%,%,$(word 1,$(subst -, ,$(1)))) \
  --noise-lr-factor $(patsubst f%,%,$(word 2,$(subst -, ,$(1)))) \
  $(if $(word 3,$(subst -, ,$(1))),--kl-factor $(patsubst k%,%,$(word 3,$(subst -, ,$(1))))))
# A case that diverges keeps its run directory (metrics.json says so) and is reported as such.
$(SCREEN)/%/metrics.json: FORCE | setup data
	$(call train_or_resume,$(SCREEN)/$*,--norm analytic --project $(call screen_flags,$*) \
	  --epochs 20 --lr-decay-epochs 10,$(QUICK)/lr-find-analytic-proj-bayes.json) \
	  || grep -q '"diverged": true' $@

results-bayes-screen: $(SCREEN_CASES:%=$(SCREEN)/%/metrics.json)
	for case in $(SCREEN_CASES); do \
	  [ -f $(SCREEN)/$$case/evaluation.json ] || [ ! -f $(SCREEN)/$$case/checkpoint.pt ] || \
	    $(BIN)/stochnorm evaluate $(SCREEN)/$$case --samples 10 --robustness-size 0 || exit 1; \
	done
	$(BIN)/stochnorm report $(SCREEN_CASES:%=$(SCREEN)/%) --out $(SCREEN) \
	  --title "Learned scale noise: initial sigma_S and its step size (20 quick epochs)"

# Schedule length: batch norm + projection against analytic norm + projection + learned
# noise (30x) at twice the quick schedule (120 epochs, rate falling to 0.1x per 60), each at
# the rate its quick search found.
LONG := $(QUICK)/long
LONG_CASES := batch-proj analytic-proj-bayes-f30
$(LONG)/%/metrics.json: FORCE | $(QUICK)/lr-find-%.json
	$(call train_or_resume,$(LONG)/$*,$(call quick_flags,$*) --epochs 120 --lr-decay-epochs 60,$|)

$(LONG)/%/evaluation.json: $(LONG)/%/metrics.json
	$(BIN)/stochnorm evaluate $(LONG)/$* --samples 10 30

results-long: $(LONG_CASES:%=$(LONG)/%/evaluation.json)
	$(BIN)/stochnorm report $(LONG_CASES:%=$(LONG)/%) --out $(LONG) \
	  --title "Quick data and width, 120 epochs: batch norm + projection vs analytic norm + projection + Bayes"

# Every experiment of `stochnorm reproduce` at the quick profile, reusing the runs above,
# then the claims-vs-measurements report.
results-reproduce: | setup data
	$(BIN)/stochnorm reproduce all --profile quick --out results/reproduce/quick \
	  --reuse $(QUICK) --no-progress
	$(BIN)/stochnorm report --reproduction results/reproduce/quick results/reproduce/width1 \
	  --out results/REPRODUCTION.md

FORCE:
