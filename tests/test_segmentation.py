"""Segmentation: the FCN of appendix A.2, the readers (TIFF, DIC-HeLa archive, folder), the
crops and their joint augmentation, the per-pixel metrics and KL, and training at batch 1."""

import importlib
import io
import json
import math
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from stochnorm import data as datasets
from stochnorm import metrics
from stochnorm.bayes import kl_divergence
from stochnorm.config import TrainConfig
from stochnorm.data import Split, Splits, dic_hela
from stochnorm.data.corruptions import deform
from stochnorm.data.segmentation import (
    RawSegmentation,
    augment_pair,
    crop_batches,
    crops_per_epoch,
    read_image,
    split_segmentation,
)
from stochnorm.errors import ConfigError, DataError
from stochnorm.experiments.segmentation import Fig9Segmentation, held_out_temperature
from stochnorm.experiments.verdicts import FAILS, HOLDS
from stochnorm.lr_search import LR_RANGE
from stochnorm.models import FCN
from stochnorm.train import check_task, train

NORMS = ("batch", "weight", "analytic", "population", "group", "layer", "none")


def cells(n=3, size=40, seed=0):
    """Images of bright disks on a dark noisy background, with their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros((size, size), dtype=np.int64)
        for _ in range(4):
            cy, cx, r = rng.integers(5, size - 5), rng.integers(5, size - 5), rng.integers(3, 6)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        images.append(mask * 150.0 + 30 + rng.normal(0, 10, mask.shape))
        masks.append(mask)
    return np.stack(images)[:, None].astype(np.float32), np.stack(masks)


def cell_splits(n=4, size=40):
    images, masks = cells(n, size)
    raw = RawSegmentation.checked(name="cells", images=images, masks=masks,
                                  classes=("background", "cell"), source="test")  # fmt: skip
    return split_segmentation(raw)


@pytest.mark.parametrize("norm", NORMS)
def test_the_fcn_keeps_the_input_size_and_gives_log_probabilities_per_pixel(norm):
    torch.manual_seed(0)
    model = FCN(1, 3, width=0.1, norm=norm)
    out = model(torch.randn(2, 1, 21, 17))
    assert out.shape == (2, 3, 21, 17)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 21, 17))


def test_the_fcn_at_width_one_has_the_papers_size():
    model = FCN(1, 2, norm="batch")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(9, 9)] * 11 + [(1, 1)]
    assert [c.out_channels for c in convs] == [64, 64, 32, 32, 16, 16, 8, 8, 8, 4, 4, 2]
    count = sum(p.numel() for p in model.parameters())
    assert 600_000 < count < 700_000  # "about 600k parameters"


def test_a_constant_displacement_moves_an_image_and_its_mask_alike():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    field = torch.zeros(1, 9, 9, 2)
    field[..., 0], field[..., 1] = 2.0, -1.0  # out(p) = in(p + (2, -1)): content moves by (-2, +1)
    moved = deform(x, field)
    mask = deform(x, field, mode="nearest")
    assert moved[0, 0, 5, 2] == pytest.approx(1.0) and mask[0, 0, 5, 2] == 1.0
    assert moved.sum() == pytest.approx(1.0) and mask.sum() == 1.0


def test_augmentation_moves_every_mask_pixel_with_its_image_pixel():
    images, masks = cells(4, 48)
    y = torch.from_numpy(masks)
    x = y[:, None].float()  # an image equal to its mask: it must stay equal after the move
    moved, moved_masks = augment_pair(x, y, torch.Generator().manual_seed(1), amplitude=3.0)
    assert not torch.equal(moved_masks, y)  # something moved
    agree = ((moved[:, 0] > 0.5).long() == moved_masks).double().mean()
    assert agree > 0.99  # bilinear vs nearest differ only on boundary pixels
    interior = (moved[:, 0] < 0.01) | (moved[:, 0] > 0.99)
    assert torch.equal((moved[:, 0] > 0.5).long()[interior], moved_masks[interior])
    flipped, flipped_masks = augment_pair(x, y, torch.Generator().manual_seed(2), amplitude=0)
    for i in range(4):  # without deformation: the same flips of both
        options = [y[i], y[i].flip(-1), y[i].flip(-2), y[i].flip(-1).flip(-2)]
        assert any(torch.equal(flipped_masks[i], o) for o in options)
        assert torch.equal(flipped[i, 0].long(), flipped_masks[i])


def test_an_epoch_of_crops_covers_the_training_pixels_once():
    data = cell_splits(4, 40)
    assert len(data.train) == 3 and len(data.val) == 1 and data.segmentation
    assert crops_per_epoch(data.train, 16, 2) == math.ceil(3 * 40 * 40 / 16**2)
    found = list(crop_batches(data.train, 2, 16, torch.Generator().manual_seed(0)))
    assert len(found) == crops_per_epoch(data.train, 16, 2) // 2
    assert all(x.shape == (2, 1, 16, 16) and y.shape == (2, 16, 16) for x, y in found)
    whole = list(crop_batches(data.train, 1, None, torch.Generator().manual_seed(0)))
    assert len(whole) == 3 and whole[0][0].shape == (1, 1, 40, 40)
    with pytest.raises(ConfigError, match="crop_size 41 exceeds"):
        next(crop_batches(data.train, 1, 41, torch.Generator()))


def test_a_region_split_keeps_the_left_columns_for_training():
    images, masks = cells(1, 40)
    raw = RawSegmentation.checked(name="one", images=images, masks=masks,
                                  classes=("b", "c"), source="test", val_column=28)  # fmt: skip
    data = split_segmentation(raw)
    assert data.train.x.shape == (1, 1, 40, 28) and data.val.x.shape == (1, 1, 40, 12)
    assert torch.equal(data.val.y[0], torch.from_numpy(masks[0, :, 28:]))
    train_pixels = images[0, 0, :, :28]
    assert data.mean[0] == pytest.approx(float(train_pixels.mean()), rel=1e-5)
    assert crops_per_epoch(data.train, 8, 1, subset=0.5) == math.ceil(0.5 * 40 * 28 / 64)


def test_iou_and_dice_match_torchmetrics_and_pixels_count_as_samples():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 2, 8, 9, generator=g), dim=1)
    labels = torch.randint(0, 2, (3, 8, 9), generator=g)
    predicted = probs.argmax(1)
    assert metrics.iou(probs, labels) == pytest.approx(
        tm.binary_jaccard_index(predicted, labels).item(), abs=1e-6
    )
    assert metrics.dice(probs, labels) == pytest.approx(
        tm.binary_f1_score(predicted, labels).item(),
        abs=1e-6,  # Dice = F1 of the foreground
    )
    rows = probs.permute(0, 2, 3, 1).reshape(-1, 2)
    found = metrics.summary(probs, labels)
    flat = metrics.summary(rows, labels.reshape(-1))
    assert {k: found[k] for k in flat} == pytest.approx(flat)
    assert set(found) - set(flat) == {"iou", "dice"}


def test_a_perfect_and_an_empty_segmentation():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 1:3, 1:3] = 1
    perfect = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    assert metrics.iou(perfect, labels) == 1.0 and metrics.dice(perfect, labels) == 1.0
    assert metrics.iou(perfect.flip(1), labels) == 0.0


def test_the_image_reader_reads_16_bit_tiffs(tmp_path):
    values = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "a.tif")
    found = read_image(tmp_path / "a.tif")
    assert found.shape == (1, 12, 10) and np.array_equal(found[0], values.astype(np.float32))
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="bad.tif: cannot read the image"):
        read_image(tmp_path / "bad.tif")


def _tif(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    return buffer.getvalue()


def _hela_archive(path, sequences=("01", "02")):
    images, masks = cells(4, 24)
    with zipfile.ZipFile(path, "w") as archive:
        for k, seq in enumerate(sequences):
            for t in (2 * k, 2 * k + 1):
                archive.writestr(f"DIC-C2DH-HeLa/{seq}/t{t:03d}.tif",
                                 _tif(images[t, 0].clip(0, 255).astype(np.uint8)))  # fmt: skip
                instances = (masks[t] * (t + 7)).astype(np.uint16)  # instance ids, not 0/1
                archive.writestr(f"DIC-C2DH-HeLa/{seq}_GT/SEG/man_seg{t:03d}.tif", _tif(instances))
            archive.writestr(f"DIC-C2DH-HeLa/{seq}/t099.tif", _tif(np.zeros((24, 24), np.uint8)))
    return masks


def test_the_dic_hela_reader_pairs_frames_with_masks_and_records_the_archive(tmp_path):
    path = tmp_path / dic_hela.ARCHIVE
    masks = _hela_archive(path)
    raw = dic_hela.read_archive(path)
    assert raw.images.shape == (4, 1, 24, 24)  # the unannotated frame t099 left out
    assert np.array_equal(raw.masks, masks)  # instance ids binarized
    record = path.with_name(path.name + ".sha256")
    assert record.read_text().split()[0] == dic_hela._digest(path.read_bytes())
    dic_hela.read_archive(path)  # the same archive again: accepted
    _hela_archive(path, sequences=("01", "02"))  # rewritten: other bytes (zip timestamps)
    with path.open("ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match="differs from the one recorded"):
        dic_hela.read_archive(path)
    other = tmp_path / "other" / dic_hela.ARCHIVE
    other.parent.mkdir()
    _hela_archive(other, sequences=("01",))
    with pytest.raises(DataError, match="sequences 01, 02"):
        dic_hela.read_archive(other)


def test_a_folder_dataset_pairs_images_with_masks_by_name(tmp_path):
    images, masks = cells(4, 24)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        Image.fromarray(images[i, 0].clip(0, 255).astype(np.uint8)).save(
            tmp_path / f"images/c{i}.png"
        )
        Image.fromarray((masks[i] * 255).astype(np.uint8)).save(tmp_path / f"masks/c{i}.tif")
    data = datasets.prepare(f"folder:{tmp_path}")
    assert data.segmentation and len(data.train) == 3 and len(data.val) == 1
    assert set(data.train.y.unique().tolist()) == {0, 1}
    cfg = TrainConfig(dataset=f"folder:{tmp_path}")
    assert cfg.dataset == f"folder:{tmp_path}"
    (tmp_path / "masks/c3.tif").unlink()
    with pytest.raises(DataError, match="c3.png: no mask c3"):
        datasets.prepare(f"folder:{tmp_path}")
    with pytest.raises(ConfigError, match="or folder:PATH"):
        TrainConfig(dataset="cells")


TINY = dict(model="fcn", width=0.05, crop_size=16, optimizer="adam", lr=1e-3, epochs=1,
            eval_train_size=1, data_init=False)  # fmt: skip


@pytest.mark.parametrize("norm", NORMS)
def test_batch_size_one_trains_every_norm(norm):
    data = cell_splits(3, 24)
    cfg = TrainConfig(norm=norm, batch_size=1, **TINY)
    result = train(cfg, data=data, progress=False)
    assert result.metrics["complete"]
    final = result.metrics["final"]["val"]
    assert 0 <= final["iou"] <= 1 and math.isfinite(final["nll"])


def test_the_kl_term_is_divided_by_the_training_pixels():
    data = cell_splits(3, 24)
    cfg = TrainConfig(norm="analytic", project=True, noise="bayes", kl_factor=0.1,
                      batch_size=2, **{**TINY, "lr": 1e-12})  # fmt: skip
    result = train(cfg, data=data, progress=False, evaluate=False)
    row = result.metrics["history"][0]
    pixels = data.train.y.numel()
    assert pixels == 2 * 24 * 24
    expected = 0.1 * kl_divergence(result.model).item() / pixels
    assert row["train_objective"] - row["train_loss"] == pytest.approx(expected, rel=1e-4)


def test_settings_of_the_other_task_are_refused():
    data = cell_splits(3, 24)
    with pytest.raises(ConfigError, match="norm_batch applies to classification"):
        train(TrainConfig(norm="batch", batch_size=1, norm_batch=2, **TINY), data=data)
    images = Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    classes = Splits("x", images, images, images, (0.0,), (1.0,), ("a", "b"), "test")
    with pytest.raises(ConfigError, match="crop_size applies to segmentation"):
        check_task(TrainConfig(crop_size=8), classes)
    with pytest.raises(ConfigError, match="allcnn predicts one class per image"):
        check_task(TrainConfig(model="allcnn"), data)
    with pytest.raises(ConfigError, match="fcn predicts a class per pixel"):
        check_task(TrainConfig(model="fcn"), classes)
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    assert LR_RANGE["adam"][1] < LR_RANGE["sgd"][0] * 100


def _numbers(bayes, batch, analytic):
    def method(values, mode):
        return {"seeds": [{"seed": s, "mode": mode, "diverged": False,
                           "val": {"iou": v, "dice": v, "nll": 1 - v, "accuracy": v}}
                          for s, v in enumerate(values)]}  # fmt: skip

    return {"samples": 10,
            "methods": {"batch": method(batch, "single"), "analytic-proj": method(analytic, "single"),
                        "analytic-proj-bayes-k0.1": method(bayes, "mc10")}}  # fmt: skip


def test_the_fig9_verdict_pairs_seeds_against_both_baselines():
    experiment = Fig9Segmentation()
    holds = experiment.verdict(_numbers([0.80, 0.82, 0.81], [0.70, 0.71, 0.69], [0.75, 0.76, 0.74]))
    assert holds.status == HOLDS and len(holds.parts) == 2
    fails = experiment.verdict(_numbers([0.70, 0.71, 0.69], [0.80, 0.82, 0.81], [0.60, 0.61, 0.6]))
    assert fails.status == FAILS
    assert [p.status for p in fails.parts] == [FAILS, HOLDS]
    assert any("analytic-proj-bayes-k0.1 (mc10, 3 seeds" in n for n in fails.notes)
    json.dumps(fails.to_dict())


def test_held_out_temperature_scores_each_half_with_the_other_halfs_fit():
    # pixels labelled from softmax(z), predicted by softmax(3 z) on the left half and by
    # softmax(z) itself on the right: the left half's fit (T = 3) scales the right half,
    # and the right half's (T = 1) the left
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 2, 64, 64, generator=g)
    labels = torch.bernoulli(torch.softmax(z, dim=1)[:, 1], generator=g).long()
    logits = torch.cat([3 * z[..., :32], z[..., 32:]], dim=-1)
    probs = torch.softmax(logits, dim=1)
    found = held_out_temperature(probs, labels)
    assert found["temperatures"] == pytest.approx([3.0, 1.0], rel=0.08)  # 4,096 pixels a half
    # independently: the NLL of softmax(z / 3) on the right and softmax(3 z) on the left
    crossed = torch.cat([3 * z[..., :32], z[..., 32:] / 3], dim=-1)
    expected = metrics.nll(torch.softmax(crossed, dim=1), labels)
    assert found["nll"] == pytest.approx(expected, rel=0.02)
    # far worse than the truth, which a fit scored on its own half would nearly reach
    assert found["nll"] > 1.1 * metrics.nll(torch.softmax(z, dim=1), labels)


def test_the_fig9_notes_compare_with_temperature_scaled_batch_norm():
    numbers = _numbers([0.80, 0.82, 0.81], [0.70, 0.71, 0.69], [0.75, 0.76, 0.74])
    for s, nll in zip(numbers["methods"]["batch"]["seeds"], [0.10, 0.12, 0.11], strict=True):
        s["temperature_scaled"] = {"nll": nll, "temperatures": [0.5, 0.5]}
    notes = Fig9Segmentation().verdict(numbers).notes
    assert any("batch single pass, temperature-scaled" in n and "0.1100" in n for n in notes)
    # the proposed method's NLL (1 - 0.81 on average) minus BN's scaled one (0.11): +0.08
    assert any("minus temperature-scaled batch: +0.0800" in n for n in notes)


def test_the_fig9_notes_report_batch_norm_as_mc_batch_norm():
    numbers = _numbers([0.80, 0.82, 0.81], [0.70, 0.71, 0.69], [0.75, 0.76, 0.74])
    for s, iou in zip(numbers["methods"]["batch"]["seeds"], [0.72, 0.74, 0.73], strict=True):
        s["mc_batchnorm"] = {"iou": iou, "dice": iou, "nll": 0.2, "accuracy": iou}
    notes = Fig9Segmentation().verdict(numbers).notes
    assert any(n.startswith("batch as MC batch norm (MC-10") and "iou 0.7300" in n for n in notes)
    # paired: 0.81 - 0.73 in IoU; NLL (1 - 0.81) - 0.2
    assert any("iou analytic-proj-bayes-k0.1 minus batch MC batch norm: +0.0800" in n
               for n in notes)  # fmt: skip
    assert any("nll analytic-proj-bayes-k0.1 minus batch MC batch norm: -0.0100" in n
               for n in notes)  # fmt: skip


def test_the_validation_region_is_predicted_once_for_val_and_test(monkeypatch):
    """A segmentation set's test split is its validation split: the final metrics predict
    it once and report it under both names."""
    training = importlib.import_module("stochnorm.train")  # the module (not the function)
    data = cell_splits(3, 24)
    assert data.test is data.val
    cfg = TrainConfig(norm="batch", batch_size=1, **TINY)
    model = training.build_model(cfg, data)
    prediction = importlib.import_module("stochnorm.prediction")
    calls = []
    original = prediction.predict_probs
    monkeypatch.setattr(
        prediction, "predict_probs", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    out = training.final_metrics(model, data, cfg, torch.device("cpu"))
    assert len(calls) == 1 and out["test"] == out["val"]
