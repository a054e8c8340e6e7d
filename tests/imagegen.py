"""Images the tests draw themselves with Pillow: gradients, charts, text, simple objects.

Nothing here is, or looks like, explicit material. The classifier's e2e tests need an
image that "fires" without one: ``peach`` (a shaded fruit on a light background) scores
around 0.1 with open_nsfw, far under the default threshold (0.8) and far above the
ordinary pictures (below 0.01), so a test config sets its threshold just below the
peach's real score. ``peach(seed)`` gives different images (different SHA-256) that
score alike, for the learning tests.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFont


def _noise(im: Image.Image, seed: int, amount: int = 6, density: float = 0.25) -> Image.Image:
    """Faint sensor-like noise, so PNGs are photo-sized (over images.min_bytes) and unique."""
    rnd = random.Random(seed)
    px = im.load()
    w, h = im.size
    for _ in range(int(w * h * density)):
        x, y = rnd.randrange(w), rnd.randrange(h)
        r, g, b = px[x, y][:3]
        d = rnd.randint(-amount, amount)
        px[x, y] = (max(0, min(255, r + d)), max(0, min(255, g + d)), max(0, min(255, b + d)))
    return im


def gradient(seed: int = 0) -> Image.Image:
    w, h = 320, 240
    im = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(im)
    for y in range(h):
        for x in range(0, w, 4):
            d.rectangle((x, y, x + 3, y), fill=(x * 255 // w, y * 255 // h, 140))
    return _noise(im, seed)


def chart(seed: int = 0) -> Image.Image:
    im = Image.new("RGB", (400, 300), "white")
    d = ImageDraw.Draw(im)
    d.line((40, 260, 380, 260), fill="black", width=2)
    d.line((40, 20, 40, 260), fill="black", width=2)
    rnd = random.Random(seed)
    for i in range(6):
        v = rnd.randint(40, 230)
        d.rectangle((60 + i * 52, 260 - v, 95 + i * 52, 260), fill=(50 + 30 * i, 100, 200))
    return _noise(im, seed)


def text(seed: int = 0) -> Image.Image:
    im = Image.new("RGB", (400, 300), (250, 250, 240))
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=22)
    lines = [
        "Chapter 4: the cell",
        "Mitochondria make",
        "the cell's energy.",
        "Photosynthesis",
        f"Quiz {seed}",
    ]
    for i, line in enumerate(lines):
        d.text((20, 20 + i * 50), line, fill="black", font=font)
    return _noise(im, seed)


def apple(seed: int = 0) -> Image.Image:
    im = Image.new("RGB", (320, 320), (200, 220, 255))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 240, 320, 320), fill=(120, 80, 40))
    d.ellipse((90, 90, 230, 230), fill=(200, 20, 30))
    d.rectangle((155, 60, 165, 100), fill=(90, 50, 20))
    d.ellipse((165, 60, 215, 85), fill=(30, 150, 40))
    return _noise(im, seed)


def house(seed: int = 0) -> Image.Image:
    im = Image.new("RGB", (320, 320), (135, 206, 235))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 250, 320, 320), fill=(60, 160, 60))
    d.rectangle((80, 150, 240, 260), fill=(180, 140, 100))
    d.polygon([(70, 150), (160, 80), (250, 150)], fill=(150, 40, 40))
    d.rectangle((140, 200, 175, 260), fill=(90, 60, 30))
    d.rectangle((95, 170, 125, 200), fill=(220, 240, 255))
    d.ellipse((250, 20, 300, 70), fill=(255, 220, 0))
    return _noise(im, seed)


def peach(seed: int = 0) -> Image.Image:
    """A shaded peach: the generated picture the model scores highest (about 0.1)."""
    im = Image.new("RGB", (320, 320), (240, 230, 220))
    d = ImageDraw.Draw(im)
    for r in range(140, 0, -4):
        d.ellipse(
            (160 - r, 170 - r, 160 + r, 170 + r), fill=(230 - r // 4, 170 - r // 6, 140 - r // 5)
        )
    return _noise(im, seed, amount=3, density=0.15)


ORDINARY = {"gradient": gradient, "chart": chart, "text": text, "apple": apple, "house": house}


def encode(im: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt.upper() == "JPEG":
        im.save(out, "JPEG", quality=90)
    elif fmt.upper() == "GIF":
        im.convert("P", palette=Image.Palette.ADAPTIVE).save(out, "GIF")
    else:
        im.save(out, fmt.upper())
    return out.getvalue()
