# Two entry points: `make demo` (set up, train the demo comparison, write the report) and
# `make test` (set up, run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned torch installs from a local CPU build where one is provided and keeps the setup
# fast; any torch >= 2.1 works: `make TORCH=torch demo` takes the newest.
TORCH ?= torch==2.13.0

.PHONY: demo test lint data setup clean results-quick results-fig3 results-table1 \
  results-reproduce results-bayes-screen results-long \
  results-benchmark results-regime

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
# dataset-fashion-mnist (installed here with apt when run as root); else downloaded. The
# nuclei image of the segmentation experiment: from the stardist wheel (pip download).
data: setup
	@$(BIN)/stochnorm data fashion-mnist 2>/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null && \
	    $(BIN)/stochnorm data fashion-mnist; } || \
	  $(BIN)/stochnorm data fashion-mnist --download
	$(BIN)/stochnorm data nuclei --download

clean:
	rm -rf $(VENV) runs .pytest_cache

# Committed quick-profile runs (results/quick/LABEL): for each run label (`stochnorm.labels`:
# a norm, "-proj" for projection onto ||w|| = 1, "-bnlike" BN-like noise with the sigmas
# measured on the quick BN run, "-bayes" learned scale noise, "-fN" its parameters stepping
# at N times the rate, ...) the paper's learning-rate search (results/quick/lr-find-LABEL.json)
# and a 60-epoch run at the rate found; `stochnorm runs` resumes an interrupted run, leaves a
# finished one as it is and refuses a directory whose configuration differs from the label's.
QUICK := results/quick
BN_NOISE := results/bn-noise/bn-noise.json
RUNS := $(BIN)/stochnorm runs --profile quick --no-progress --noise-from $(BN_NOISE)

BASELINES := batch none
results-quick: | setup data
	$(RUNS) $(BASELINES) --out $(QUICK)
	$(BIN)/stochnorm report $(BASELINES:%=$(QUICK)/%) --out $(QUICK) \
	  --title "Quick profile: batch norm vs no normalization (Fashion-MNIST)"

# Main paper Fig. 3: each normalization with and without projection, and the baselines a
# practitioner would use instead (group norm with 32 groups, layer norm).
# (population-detached, constant statistics in the backward pass, is trained beside them and
# left out of the plot, where its loss of about 1.7 would flatten every other curve.)
FIG3 := batch batch-proj analytic-proj weight-proj analytic weight population population-proj \
  group layer
results-fig3: | setup data
	$(RUNS) $(FIG3) population-detached --out $(QUICK)
	$(BIN)/stochnorm report $(FIG3:%=$(QUICK)/%) --out $(QUICK)/fig3 \
	  --title "Quick profile: normalizations with and without projection (Fashion-MNIST)"

# The main paper's Table 1: each run evaluated (single pass, MC-10, MC-30, error-coverage,
# Gaussian noise and FGSM on 2,000 test images); -f30: the learned noise free to move.
TABLE1 := batch batch-proj weight-proj-bnlike analytic-proj-bnlike weight-proj-bayes \
  analytic-proj-bayes analytic-proj-bayes-f30 group layer
results-table1: | setup data
	$(RUNS) $(TABLE1) --out $(QUICK) --evaluate --samples 10 30
	$(BIN)/stochnorm report $(TABLE1:%=$(QUICK)/%) --out $(QUICK)/table1 \
	  --title "Quick profile: the main paper's Table 1 on Fashion-MNIST"

# Where learned noise helps: analytic norm + projection at the quick data and width for 20
# epochs (rate falling to 0.1x after 10), at the rate lr-find chose for the 60-epoch Bayes
# run: learned noise from sigma_S = 0.1 (or -sS), its parameters stepping at 1x (or -fF) the
# rate, the KL term weighted by 1 (or -kK); analytic-proj: no noise (the reference). A case
# that diverges keeps its run directory (metrics.json says so) and is reported as such.
SCREEN := $(QUICK)/bayes-screen
SCREEN_CASES := analytic-proj analytic-proj-bayes analytic-proj-bayes-s0.3 \
  analytic-proj-bayes-f30 analytic-proj-bayes-s0.3-f30 analytic-proj-bayes-f100 \
  analytic-proj-bayes-s0.03-f30 analytic-proj-bayes-f30-k0 analytic-proj-bayes-f30-k10 \
  analytic-proj-bayes-f30-k100 analytic-proj-bayes-s0.03-f10
results-bayes-screen: | setup data
	$(RUNS) $(SCREEN_CASES) --out $(SCREEN) --epochs 20 --lr-decay-epochs 10 \
	  --lr-from $(QUICK)/lr-find-analytic-proj-bayes.json --evaluate --samples 10 \
	  --robustness-size 0
	$(BIN)/stochnorm report $(SCREEN_CASES:%=$(SCREEN)/%) --out $(SCREEN) \
	  --title "Learned scale noise: initial sigma_S and its step size (20 quick epochs)"

# Schedule length: batch norm + projection against analytic norm + projection + learned
# noise (30x) at twice the quick schedule (120 epochs, rate falling to 0.1x per 60), each at
# the rate its quick search found.
LONG := $(QUICK)/long
LONG_CASES := batch-proj analytic-proj-bayes-f30
results-long: | setup data
	$(RUNS) $(LONG_CASES) --out $(LONG) --epochs 120 --lr-decay-epochs 60 --lr-from $(QUICK) \
	  --evaluate --samples 10 30
	$(BIN)/stochnorm report $(LONG_CASES:%=$(LONG)/%) --out $(LONG) \
	  --title "Quick data and width, 120 epochs: batch norm + projection vs analytic norm + projection + Bayes"

# Every experiment of `stochnorm reproduce` at the quick profile, reusing the runs above,
# those whose runs have three seeds again with paired seed verdicts (SEEDED), then the
# claims-vs-measurements report.
SEEDED := fig1-bn-generalization fig3-projection fig9-segmentation
results-reproduce: | setup data
	$(BIN)/stochnorm reproduce all --profile quick --out results/reproduce/quick \
	  --reuse $(QUICK) --reuse results/reproduce/quick-seeds3/runs --no-progress
	$(BIN)/stochnorm reproduce $(SEEDED) --profile quick --seeds 3 \
	  --out results/reproduce/quick-seeds3 --reuse $(QUICK) --reuse results/reproduce/quick/runs \
	  --no-progress
	$(BIN)/stochnorm report --reproduction results/reproduce/quick results/reproduce/width1 \
	  results/reproduce/quick-seeds3 --out results/REPRODUCTION.md

# The main paper's experiments in the paper's regime (training loss near zero): the regime
# profile, 3 seeds, the noise of Table 1 chosen by its search; about 5 hours on 2 CPU cores.
REGIME := table1-bayes figA3-error-coverage figA4-robustness fig3-projection \
  fig1-bn-generalization fig2-normalization-batch figA2-seed-spread fig5-bn-like-noise \
  figA1-batch-size
results-regime: | setup data
	$(BIN)/stochnorm reproduce $(REGIME) --profile regime --seeds 3 \
	  --out results/reproduce/regime-seeds3 --no-progress

# The practitioner's benchmark (BENCHMARK.md): regimes x methods x 3 seeds at the bench
# profile, rates from the committed quick searches; about ten hours on 2 CPU cores, resumes.
results-benchmark: | setup data
	$(BIN)/stochnorm benchmark --profile bench --out results/benchmark --reuse $(QUICK) \
	  --no-progress
