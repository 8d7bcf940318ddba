"""Per-epoch histories as train.py writes them, made up for tests of plots and verdicts."""


def history(val_acc, *, train_loss=None, train_eval_loss=None, val_loss=None):
    """Per-epoch rows as train.py writes them, from lists of values."""
    n = len(val_acc)
    train_loss = train_loss or [0.5] * n
    train_eval_loss = train_eval_loss or [0.4] * n
    val_loss = val_loss or [0.3] * n
    return [
        {"epoch": i + 1, "val_acc": a, "train_loss": t, "train_eval_loss": e, "val_loss": v}
        for i, (a, t, e, v) in enumerate(
            zip(val_acc, train_loss, train_eval_loss, val_loss, strict=True)
        )
    ]
