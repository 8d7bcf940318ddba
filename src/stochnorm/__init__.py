"""stochnorm: batch-independent normalization with learned Bayesian noise, for PyTorch.

The public API:

- `AllCNN`: All-CNN-C with a choice of normalization (`Norm`, `make_norm`).
- `data_dependent_init_`: the data-dependent initialization of appendix A.1.
- `TrainConfig`, `train`, `lr_find`: the one training loop and its learning-rate search.
- `metrics`: accuracy, NLL, ECE, Brier, error-vs-coverage, AURC.
- `data`: Fashion-MNIST and CIFAR-10 readers, splits, augmentation.
"""

from . import data, metrics
from .config import PROFILES, TrainConfig
from .errors import ConfigError, DataError, RunDirError, StochnormError
from .initialization import data_dependent_init_
from .lr_search import lr_find
from .models import AllCNN
from .norms import Norm, make_norm
from .train import TrainResult, load_run, train

__version__ = "0.1.0"

__all__ = [
    "PROFILES", "AllCNN", "ConfigError", "DataError", "Norm", "RunDirError",
    "StochnormError", "TrainConfig", "TrainResult", "data", "data_dependent_init_",
    "load_run", "lr_find", "make_norm", "metrics", "train",
]  # fmt: skip
