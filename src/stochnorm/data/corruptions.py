"""Shifted inputs: the common image corruptions of Hendrycks & Dietterich (2019, "Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations"), each at 5 severities,
written with torch for small grayscale (or colour) images in [0, 1].

The corruptions are theirs; the severity constants are ours, set for 28x28 images in the
spirit of their 32x32 CIFAR-10-C (a maintained package such as `imagecorruptions` targets
ImageNet-sized RGB images and pulls in OpenCV and scikit-image). Every corruption maps
[N, C, H, W] images in [0, 1] to images in [0, 1] and draws its randomness from the given
generator, so a corrupted test set is the same for every model.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from .splits import Split, Splits

Corruption = Callable[[Tensor, float, torch.Generator], Tensor]


def gaussian_noise(x: Tensor, std: float, g: torch.Generator) -> Tensor:
    return (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


def shot_noise(x: Tensor, photons: float, g: torch.Generator) -> Tensor:
    """Poisson noise of an image that collected `photons` photons at full brightness."""
    return (torch.poisson(x * photons, generator=g) / photons).clamp(0, 1)


def impulse_noise(x: Tensor, amount: float, g: torch.Generator) -> Tensor:
    """Salt and pepper: a fraction `amount` of the pixels set to 0 or 1 (half each)."""
    u = torch.rand(x.shape, generator=g)
    out = x.clone()
    out[u < amount / 2] = 0.0
    out[(u >= amount / 2) & (u < amount)] = 1.0
    return out


def gaussian_blur(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    """Convolution with a Gaussian of std `sigma` pixels (borders repeat the edge)."""
    return blur(x, sigma).clamp(0, 1)


def contrast(x: Tensor, factor: float, g: torch.Generator) -> Tensor:
    """Each image's deviations from its mean grey level scaled by `factor` < 1."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 1)


def brightness(x: Tensor, shift: float, g: torch.Generator) -> Tensor:
    """Every pixel brighter by `shift` (the value channel of HSV; grey levels here)."""
    return (x + shift).clamp(0, 1)


def pixelate(x: Tensor, fraction: float, g: torch.Generator) -> Tensor:
    """Scaled down to `fraction` of the size and back up, both with Pillow's box filter (as
    Hendrycks & Dietterich do), channel by channel."""
    h, w = x.shape[-2:]
    small = (max(1, round(w * fraction)), max(1, round(h * fraction)))
    out = torch.empty_like(x)
    for i, image in enumerate(x):
        for c, channel in enumerate(image):
            found = Image.fromarray(channel.numpy().astype(np.float32), mode="F")
            found = found.resize(small, Image.BOX).resize((w, h), Image.BOX)
            out[i, c] = torch.from_numpy(np.array(found, dtype=np.float32))
    return out.clamp(0, 1)


def jpeg(x: Tensor, quality: float, g: torch.Generator) -> Tensor:
    """JPEG compression at `quality` (Pillow's encoder), image by image."""
    out = torch.empty_like(x)
    for i, image in enumerate(x):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        mode = "L" if array.shape[2] == 1 else "RGB"
        buffer = io.BytesIO()
        Image.fromarray(array.squeeze(2) if mode == "L" else array, mode).save(
            buffer, "JPEG", quality=int(quality)
        )
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
        out[i] = torch.from_numpy(decoded.reshape(array.shape)).permute(2, 0, 1)
    return out


def elastic(x: Tensor, amplitude: float, g: torch.Generator, smoothness: float = 3.0) -> Tensor:
    """Elastic deformation: every pixel displaced by a smooth random field (white noise
    blurred by a Gaussian of std `smoothness` pixels, scaled to an rms displacement of
    `amplitude` pixels), resampled bilinearly (`elastic_field`, `deform`)."""
    return deform(x, elastic_field(x.shape[0], x.shape[-2:], amplitude, g, smoothness)).clamp(0, 1)


def elastic_field(
    n: int, size: tuple[int, int], amplitude: float, g: torch.Generator, smoothness: float = 3.0
) -> Tensor:
    """Random smooth displacements [n, H, W, 2] in pixels (x then y), each component with
    rms `amplitude` over the image."""
    h, w = size
    noise = torch.randn((n, 2, h, w), generator=g)
    smooth = blur(noise, smoothness)
    rms = smooth.pow(2).mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    return (smooth / rms * amplitude).permute(0, 2, 3, 1)


def deform(x: Tensor, displacement: Tensor, mode: str = "bilinear") -> Tensor:
    """Images [N, C, H, W] resampled at each pixel's position plus `displacement` [N, H, W, 2]
    (pixels, x then y), the borders repeated: out(p) = x(p + d(p))."""
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype),
                            indexing="ij")  # fmt: skip
    px = xs + displacement[..., 0]
    py = ys + displacement[..., 1]
    grid = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], dim=-1)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=True)


def blur(x: Tensor, sigma: float) -> Tensor:
    """Each channel of [N, C, H, W] convolved with a separable Gaussian of std `sigma`
    pixels, the borders repeating the edge (images or displacement fields alike)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius,) * 4, mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


# name -> (corruption, its parameter at severities 1..5)
CORRUPTIONS: dict[str, tuple[Corruption, tuple[float, ...]]] = {
    "gaussian_noise": (gaussian_noise, (0.04, 0.08, 0.12, 0.18, 0.26)),
    "shot_noise": (shot_noise, (250.0, 100.0, 50.0, 25.0, 12.0)),
    "impulse_noise": (impulse_noise, (0.01, 0.03, 0.06, 0.10, 0.17)),
    "gaussian_blur": (gaussian_blur, (0.4, 0.6, 0.8, 1.0, 1.3)),
    "contrast": (contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "brightness": (brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "pixelate": (pixelate, (0.9, 0.8, 0.7, 0.6, 0.5)),
    "jpeg": (jpeg, (80, 65, 50, 35, 20)),
    "elastic": (elastic, (0.5, 0.75, 1.0, 1.25, 1.5)),
}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(x: Tensor, name: str, severity: int, g: torch.Generator) -> Tensor:
    """Images [N, C, H, W] in [0, 1] with corruption `name` at `severity` (1-5)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    function, levels = CORRUPTIONS[name]
    return function(x, levels[severity - 1], g)


def corrupted(data: Splits, split: Split, name: str, severity: int, seed: int = 0) -> Split:
    """`split` (standardized as `data`'s images are) with its images corrupted in pixel
    space and standardized again; the same images for the same seed."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    pixels = (split.x * std + mean).clamp(0, 1)
    g = torch.Generator().manual_seed(seed)
    return Split((corrupt(pixels, name, severity, g) - mean) / std, split.y)
