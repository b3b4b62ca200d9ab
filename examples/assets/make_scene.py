"""Draw ``lakeside.png``, the picture used by the README and the CLI docs (CC0-1.0, made here).

A procedurally drawn landscape (sky, sun, mountains, hills, lake, trees, a house) with regions
that a vision model should tell apart, so the PCA feature picture of ``radio visualize`` shows
visible structure. Deterministic: rerunning this script writes the same file.

    python examples/assets/make_scene.py            # writes examples/assets/lakeside.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 480
HORIZON = 300  # y of the lake shore


def _ridge(rng: np.random.Generator, base: float, amp: float, waves: int) -> np.ndarray:
    """A smooth random ridge line: one y value per column."""
    x = np.linspace(0, 1, WIDTH)
    y = np.full(WIDTH, float(base))
    for k in range(1, waves + 1):
        y += amp / k * np.sin(2 * np.pi * (k * x + rng.uniform()))
    return y


def draw_scene(seed: int = 7) -> Image.Image:
    """The landscape as an RGB image of 640x480 pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    t = np.clip(yy / HORIZON, 0, 1)[..., None]
    sky = (1 - t) * np.array([40, 90, 180]) + t * np.array([200, 220, 240])
    sun = np.exp(-((xx - 470) ** 2 + (yy - 90) ** 2) / (2 * 35.0 ** 2))[..., None]
    sky = sky + sun * (np.array([255, 240, 200]) - sky)
    img = np.clip(sky, 0, 255)

    far = _ridge(rng, 200, 40, 4)
    near = _ridge(rng, 255, 25, 6)
    mountains = (yy >= far[None, :]) & (yy < HORIZON)
    img[mountains] = np.array([105, 115, 140]) + (yy[mountains, None] - 160) * 0.2
    snow = mountains & (yy < far[None, :] + 12) & (far[None, :] < 185)
    img[snow] = [235, 238, 245]
    hills = (yy >= near[None, :]) & (yy < HORIZON)
    img[hills] = np.array([60, 120, 50]) + rng.normal(0, 6, (int(hills.sum()), 1))

    lake = yy >= HORIZON
    mirror = np.clip(2 * HORIZON - yy[lake].astype(int), 0, HORIZON - 1)
    img[lake] = img[mirror, xx[lake].astype(int)] * 0.6 + np.array([10, 40, 70]) * 0.4
    ripple = (np.sin(yy[lake] * 0.9 + np.sin(xx[lake] * 0.05) * 2) * 8)[:, None]
    img[lake] = img[lake] + ripple

    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for x0 in (40, 75, 110, 160, 560, 600):  # pine trees on the shore
        h = int(rng.integers(60, 95))
        draw.rectangle([x0 - 3, HORIZON - 12, x0 + 3, HORIZON], fill=(80, 50, 30))
        draw.polygon([(x0 - 18, HORIZON - 10), (x0 + 18, HORIZON - 10), (x0, HORIZON - 10 - h)], fill=(25, 70, 35))
    draw.rectangle([250, HORIZON - 45, 320, HORIZON], fill=(170, 40, 35))  # a red house
    draw.polygon([(242, HORIZON - 45), (328, HORIZON - 45), (285, HORIZON - 80)], fill=(70, 50, 45))
    draw.rectangle([278, HORIZON - 28, 292, HORIZON], fill=(60, 40, 30))
    draw.rectangle([258, HORIZON - 36, 270, HORIZON - 24], fill=(240, 220, 140))
    return pil.filter(ImageFilter.GaussianBlur(0.6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("lakeside.png")))
    args = parser.parse_args()
    draw_scene().save(args.out, optimize=True)


if __name__ == "__main__":
    main()
