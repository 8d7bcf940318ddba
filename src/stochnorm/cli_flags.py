"""The flags of the `stochnorm` command that set TrainConfig fields: one table, from which
the parser, the help and the overrides are built."""

from __future__ import annotations

CONFIG_FLAGS = {  # flag -> (TrainConfig field, type, help)
    "--dataset": (
        "dataset", str,
        "fashion-mnist (default), cifar10; segmentation: nuclei, dic-hela, or folder:PATH "
        "(PATH/images and PATH/masks)",
    ),
    "--model": (
        "model", str,
        "allcnn (All-CNN-C, default), resnet20, fcn (segmentation), or your own factory package.module:function "
        "(called with in_channels=, num_classes=; its batch norms are converted to --norm)",
    ),
    "--norm": (
        "norm", str,
        "normalization after every conv: none, batch, weight, analytic, population, group, layer",
    ),
    "--groups": ("groups", int, "group norm: number of groups G (32; gcd(C, G) where G does not divide C)"),
    "--width": ("width", float, "channel multiplier of the registered models (1 = the paper's All-CNN-C)"),
    "--padding": (
        "padding", int, "zero padding of the first six convs (1 = Springenberg's All-CNN-C)",
    ),
    "--subset": (
        "subset", float,
        "fraction of the training split to train on, in (0, 1]; segmentation: the fraction of "
        "the training pixels one epoch's crops cover",
    ),
    "--epochs": ("epochs", int, "number of epochs"),
    "--lr": ("lr", float, "initial learning rate (find one with `stochnorm lr-find`)"),
    "--lr-decay-epochs": (
        "lr_decay_epochs", float, "epochs after which the rate has fallen to 0.1*lr",
    ),
    "--batch-size": ("batch_size", int, "training batch size (the paper: 32)"),
    "--norm-batch": (
        "norm_batch", int,
        "samples in the normalization statistics: the training batch plus random others "
        "(default: the training batch alone)",
    ),
    "--ghost-batch": (
        "ghost_batch", int,
        "batch norm: statistics over groups of this many samples of the batch (data-parallel "
        "training without synchronized BN, emulated; default: the whole batch)",
    ),
    "--momentum": ("momentum", float, "Nesterov momentum of SGD (0.9)"),
    "--optimizer": ("optimizer", str, "sgd (default, with Nesterov momentum) or adam"),
    "--crop-size": (
        "crop_size", int, "segmentation: train on random square crops of this size (whole images)",
    ),
    "--weight-decay": ("weight_decay", float, "L2 weight decay (0)"),
    "--gamma-decay": (
        "gamma_decay", float, "coefficient of the penalty on the squared scales s (Luo et al.; 0)",
    ),
    "--noise": ("noise", str, "noise after every normalization: bn-like or bayes (none)"),
    "--sigma-v": ("sigma_v", float, "bn-like noise: std of the additive noise V, all layers (0)"),
    "--sigma-u": (
        "sigma_u", float, "bn-like noise: std of the multiplicative noise U, all layers (0)",
    ),
    "--sigma-s": ("sigma_s", float, "bayes: initial std of the scale posterior q(S) (0.1)"),
    "--kl-factor": ("kl_factor", float, "bayes: weight of the KL term, 1 = Bayesian (1)"),
    "--noise-lr-factor": (
        "noise_lr_factor", float, "bayes: learning rate of sigma_S as a multiple of --lr (1)",
    ),
    "--population-sync": (
        "population_sync", str,
        "population norm under torchrun: all-reduce (default: the global batch's statistics "
        "and estimates) or broadcast (each process's own batch, rank 0's estimates)",
    ),
    "--noise-optimizer": (
        "noise_optimizer", str, "bayes: sgd (default) or adam for the noise parameters",
    ),
    "--seed": ("seed", int, "seed of initialization, batch order, augmentation and noise"),
    "--split-seed": ("split_seed", int, "seed of the fixed 90/10 train/validation split"),
    "--eval-train-size": (
        "eval_train_size", int, "training images on which the eval-mode loss is measured",
    ),
    "--eval-size": (
        "eval_size", int, "only the first N validation and test images (default: all; for checks)",
    ),
    "--eval-batch-size": ("eval_batch_size", int, "batch size for evaluation"),
}  # fmt: skip


SWITCHES = {  # on/off flag (--x / --no-x) -> (TrainConfig field, help)
    "--augment": (
        "augment",
        "random 2-px translation and horizontal flip of training images; segmentation: "
        "horizontal and vertical flips and an elastic deformation of image and mask (on)",
    ),
    "--data-init": (
        "data_init", "data-dependent initialization of the plain network and weight norm (on)",
    ),
    "--project": (
        "project", "project scale-invariant weights onto ||w|| = 1 after every step (off)",
    ),
    "--population-gradient": (
        "population_gradient",
        "population norm: gradient through the batch's statistics, forward with the "
        "population's (on)",
    ),
    "--sigma-s-per-layer": (
        "sigma_s_per_layer", "bayes: one sigma_S per layer instead of one per channel (off)",
    ),
    "--sync-bn": (
        "sync_bn",
        "batch norm under torchrun: statistics over the global batch, all-reduced in every "
        "layer (SyncBatchNorm; off: each process's share, as DDP without SyncBN)",
    ),
    "--exact-first-layer": (
        "exact_first_layer",
        "analytic norm: first-layer moments from the input patch covariance (on)",
    ),
    "--rectified-residuals": (
        "rectified_residuals",
        "analytic norm: the ReLU after a residual addition as relu(relu(a) + b), not the sum "
        "taken as Gaussian (off)",
    ),
    "--border-aware-convs": (
        "border_aware_convs",
        "analytic norm: the conv rule counts zero padding (off)",
    ),
}  # fmt: skip


# Settings a user may change for every run of an experiment (the experiment sets the rest).
REPRODUCE_FLAGS = ("--dataset", "--model", "--width", "--padding", "--subset", "--epochs",
                   "--lr-decay-epochs", "--eval-train-size", "--eval-size", "--eval-batch-size")  # fmt: skip
