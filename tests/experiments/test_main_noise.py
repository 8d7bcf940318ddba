"""The helpers of the stochastic-side experiments (experiments/main_noise.py) against
independent computations, `diagnostics.measure_bn_noise` against `bn_noise` itself, and the
bar chart of Table 1."""


# ---------------------------------------------------------------- fits and areas


# ---------------------------------------------------------------- error-coverage


# ---------------------------------------------------------------- verdict on histories


# ---------------------------------------------------------------- BN noise of a run
