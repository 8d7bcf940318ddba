import pytest
import torch

from stochnorm.data import corruptions as C


@pytest.fixture(scope="module")
def images(tiny_fashion):
    mean, std = tiny_fashion.mean[0], tiny_fashion.std[0]
    return (tiny_fashion.test.x[:64] * std + mean).clamp(0, 1)


def test_every_corruption_keeps_shape_and_range_is_seeded_and_grows_with_severity(images):
    for name in C.CORRUPTIONS:
        changes = []
        for severity in C.SEVERITIES:
            out = C.corrupt(images, name, severity, torch.Generator().manual_seed(3))
            again = C.corrupt(images, name, severity, torch.Generator().manual_seed(3))
            assert out.shape == images.shape and out.dtype == images.dtype, name
            assert out.min() >= 0 and out.max() <= 1, name
            assert torch.equal(out, again), name
            changes.append((out - images).abs().mean().item())
        assert changes[0] > 0, name
        # more severe = further from the clean image (a little slack for the random ones)
        assert all(b >= 0.97 * a for a, b in zip(changes, changes[1:], strict=False)), (
            name,
            changes,
        )


def test_noise_corruptions_have_their_stated_statistics():
    g = torch.Generator().manual_seed(0)
    grey = torch.full((4, 1, 64, 64), 0.5)
    noisy = C.gaussian_noise(grey, 0.08, g) - grey
    assert noisy.std().item() == pytest.approx(0.08, rel=0.03)  # MC, 16k pixels
    shot = C.shot_noise(grey, 100.0, g)
    assert shot.mean().item() == pytest.approx(0.5, abs=0.003)
    assert shot.var().item() == pytest.approx(0.5 / 100.0, rel=0.05)  # Poisson: var = x / photons
    salted = C.impulse_noise(grey, 0.1, g)
    assert (salted != grey).double().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (salted == 1).double().mean().item() == pytest.approx(0.05, abs=0.006)


def test_blur_of_a_point_is_the_sampled_gaussian():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    sigma = 1.3
    out = C.blur(x, sigma)[0, 0]
    t = torch.arange(-10, 11, dtype=torch.float32)
    g1 = torch.exp(-(t**2) / (2 * sigma**2))
    g1 = g1 / g1[t.abs() <= 4].sum()  # the kernel is cut at 3 sigma (radius 4)
    g1[t.abs() > 4] = 0
    assert torch.allclose(out, g1[:, None] * g1[None, :], atol=1e-6)


def test_contrast_brightness_and_pixelate_by_hand(images):
    g = torch.Generator()
    low = C.contrast(images, 0.5, g)
    assert torch.allclose(low.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-6)
    assert torch.allclose(low.std(dim=(1, 2, 3)), 0.5 * images.std(dim=(1, 2, 3)), atol=1e-5)
    assert torch.allclose(C.brightness(images, 0.2, g), (images + 0.2).clamp(0, 1))
    coarse = C.pixelate(images, 0.5, g)  # 28 -> 14: every 2x2 block is its mean
    blocks = images.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2))
    assert torch.allclose(coarse[:, :, ::2, ::2], blocks, atol=1e-6)
    assert torch.equal(coarse[:, :, ::2, ::2], coarse[:, :, 1::2, 1::2])


def test_jpeg_quality_orders_the_error(images):
    g = torch.Generator()
    fine = (C.jpeg(images, 95, g) - images).abs().mean().item()
    coarse = (C.jpeg(images, 10, g) - images).abs().mean().item()
    assert fine < 0.01 < coarse


def test_deform_moves_mask_and_image_pixels_together():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 16, 16, generator=g)
    none = torch.zeros(2, 16, 16, 2)
    assert torch.allclose(C.deform(image, none), image, atol=1e-6)
    shift = none.clone()
    shift[..., 0] = 1.0  # out(y, x) = in(y, x + 1)
    moved = C.deform(image, shift)
    assert torch.allclose(moved[..., :-1], image[..., 1:], atol=1e-6)
    # a labelled pixel lands where its image pixel lands, under one smooth random field
    field = C.elastic_field(2, (16, 16), 1.5, g)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 8, 8] = 1.0
    marked = image.clone()
    marked[:, :, 8, 8] = 5.0  # a value no other pixel has
    warped_mask = C.deform(mask, field, mode="nearest")
    warped = C.deform(marked, field, mode="nearest")
    assert torch.equal(warped_mask == 1, warped == 5.0)
    rms = field.pow(2).mean(dim=(1, 2)).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 1.5), atol=1e-5)


def test_corrupted_split_roundtrips_standardization(tiny_fashion):
    split = tiny_fashion.test.head(10)
    out = C.corrupted(tiny_fashion, split, "brightness", 3, seed=1)
    mean, std = tiny_fashion.mean[0], tiny_fashion.std[0]
    expected = ((split.x * std + mean).clamp(0, 1) + 0.15).clamp(0, 1)
    assert torch.allclose(out.x * std + mean, expected, atol=1e-5)
    assert torch.equal(out.y, split.y)


def test_bad_corruption_names_and_severities_are_rejected(images):
    g = torch.Generator()
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        C.corrupt(images, "fog", 1, g)
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(images, "contrast", 6, g)
