"""stochnorm: batch-independent normalization with learned Bayesian noise, for PyTorch.

The public API:

- Normalizations of the form `(w·x - mu(w)) / sigma(w) * s + b` (main paper eq. 2):
  `BatchNorm`, `WeightNorm`, `AnalyticNorm`, `PopulationNorm`, and the baselines
  `GroupNorm`, `LayerNorm`, chosen by name (`Norm`, `make_norm`); `gamma_decay` (Luo et
  al.'s penalty on the scales).
- `convert(model, norm)`: swap every batch norm of any model for another normalization;
  `fold(model)`: fold normalizations into the layers for inference.
- `project_(model)`: scale-invariant weights onto ||w|| = 1 (section 2).
- Noise after the normalizations (section 3): `add_noise(model, "bn-like" | "bayes")`
  (`BNLikeNoise`, `ScaleNoise`), `kl_divergence(model)`, `elbo_loss_term`, `with
  sampling(model):` (noise on in an eval model), `predict(model, x, samples=K)` (the MC
  average of probabilities), `bn_noise_model` (the paper's model of BN's randomness).
- `moments`: closed-form mean/variance rules; `analytic`: their propagation over a model.
- `models`: the model registry (`AllCNN`, `ResNet` / ResNet-20, or a user's factory
  `package.module:function`); `data_dependent_init_`: the initialization of appendix A.1.
- `TrainConfig`, `train`, `lr_find`, `load_run`: the one training loop and its lr search.
- `metrics`: accuracy, NLL, ECE, Brier, error-vs-coverage, AURC.
- `data`: Fashion-MNIST and CIFAR-10 readers, splits, augmentation.
"""

from . import analytic, data, metrics, models, moments
from .bayes import add_noise, elbo_loss_term, kl_divergence, predict, sampling
from .config import PROFILES, TrainConfig
from .convert import convert, fold
from .errors import ConfigError, DataError, RunDirError, StochnormError
from .evaluation import load_run
from .initialization import data_dependent_init_
from .lr_search import lr_find
from .models import AllCNN, ResNet
from .noise import BNLikeNoise, ScaleNoise, bn_noise_model
from .norms import (
    AnalyticNorm,
    BatchNorm,
    GroupNorm,
    LayerNorm,
    Norm,
    PopulationNorm,
    WeightNorm,
    gamma_decay,
    make_norm,
)  # fmt: skip
from .projection import project_
from .train import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "PROFILES", "AllCNN", "AnalyticNorm", "BNLikeNoise", "BatchNorm", "ConfigError",
    "DataError", "GroupNorm", "LayerNorm", "Norm", "ResNet", "PopulationNorm", "RunDirError", "ScaleNoise", "StochnormError",
    "TrainConfig", "TrainResult", "WeightNorm", "add_noise", "analytic", "bn_noise_model",
    "convert", "data", "data_dependent_init_", "elbo_loss_term", "fold", "gamma_decay",
    "kl_divergence", "load_run", "lr_find", "make_norm", "metrics", "models", "moments", "predict",
    "project_", "sampling", "train",
]  # fmt: skip
