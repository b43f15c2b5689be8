"""Captioned shapes: the caption grammar, a seeded image generator and an analytic adherence score.

The data set ``flux-mini`` is trained on: one coloured shape on a white background, and a
caption that names some or all of its four attributes::

    caption  := "a" [size] [colour] (shape | "shape") [place]
    size     := "small" | "large"
    colour   := "red" | "yellow" | "green" | "cyan" | "blue" | "purple"
    shape    := "circle" | "square" | "triangle"
    place    := "at the top left" | "at the top right" | "at the bottom left" | "at the bottom right"
              | "at the top" | "at the bottom" | "on the left" | "on the right"

"a red circle" asks for any size and place, "a shape at the top" for the top half, and the
empty caption for nothing at all. The generator draws each shape antialiased (4x
supersampled, box-filtered), with its centre and size jittered within its class.

:func:`adherence` reads colour (mean of the strongly inked pixels, nearest palette colour),
place (ink centroid), shape (ink area over box area: 1 square, pi/4 circle, 1/2 triangle; the
box's sides are the most ink one row and one column hold) and size (the side a shape of that
kind and area has) from each image and checks what its prompt names. Only torch, numpy and PIL: this module knows no pipeline.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from hasten.errors import HastenError

#: the palette, RGB 0..255; hues about 60 degrees apart
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35), "yellow": (235, 200, 25), "green": (35, 165, 55),
    "cyan": (25, 185, 205), "blue": (40, 70, 220), "purple": (160, 45, 200),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
ROWS = ("top", "bottom")
COLS = ("left", "right")
#: the four places: (row, col)
PLACES = tuple((row, col) for row in ROWS for col in COLS)
#: every place phrase the grammar has: (row or None, col or None) -> words
PLACE_PHRASES: dict[tuple[str | None, str | None], str] = {
    **{(row, col): f"at the {row} {col}" for row, col in PLACES},
    **{(row, None): f"at the {row}" for row in ROWS},
    **{(None, col): f"on the {col}" for col in COLS},
}
#: the side of a shape's bounding box as a fraction of the image side, per size class
SIDE_RANGE = {"small": (11 / 64, 14 / 64), "large": (20 / 64, 24 / 64)}
#: the largest jitter of a shape's centre from its quadrant's centre, as a fraction of the image side
CENTRE_JITTER = 3 / 64
#: ink area over bounding-box area of each shape (the triangle: base and height the box's side)
FILL = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}
#: every word the grammar uses
VOCABULARY = tuple(sorted({"a", "shape", "at", "the", "on", *SIZES, *COLOURS, *SHAPES, *ROWS, *COLS}))
ATTRIBUTES = ("colour", "shape", "position", "size")


@dataclass(frozen=True)
class Attributes:
    """What a caption asks for, or what an image shows; ``None`` where it says nothing."""

    colour: str | None = None
    shape: str | None = None
    row: str | None = None
    col: str | None = None
    size: str | None = None

    def caption(self) -> str:
        """The caption of the grammar that asks for exactly these attributes ("" for none)."""
        if self == Attributes():
            return ""
        words = ["a", self.size, self.colour, self.shape or "shape"]
        if self.row or self.col:
            words.append(PLACE_PHRASES[(self.row, self.col)])
        return " ".join(w for w in words if w)


def caption(colour: str | None = None, shape: str | None = None, row: str | None = None, col: str | None = None,
            size: str | None = None) -> str:
    """The caption asking for these attributes, e.g. ``caption("red", "circle", "top", "left")``."""
    return Attributes(colour, shape, row, col, size).caption()


def all_captions() -> list[str]:
    """Every caption the grammar can say (756: 3 sizes x 7 colours x 4 shapes x 9 places;
    the one that names nothing is "")."""
    out = [""]
    for size in (None, *SIZES):
        for colour in (None, *COLOURS):
            for shape in (None, *SHAPES):
                for row, col in ((None, None), *PLACE_PHRASES):
                    attrs = Attributes(colour, shape, row, col, size)
                    if attrs != Attributes():
                        out.append(attrs.caption())
    return out


def full_attributes() -> list[Attributes]:
    """The 144 fully specified attribute sets (colour x shape x place x size), in a fixed order."""
    return [Attributes(c, s, r, k, z) for c in COLOURS for s in SHAPES for r, k in PLACES for z in SIZES]


_PLACE_PATTERNS = {phrase: key for key, phrase in PLACE_PHRASES.items()}


def parse_caption(text: str, name: str = "prompt") -> Attributes:
    """The attributes ``text`` asks for; a HastenError naming ``name`` where it is not of the grammar."""
    if not isinstance(text, str):
        raise HastenError(f"{name} must be a caption string, got {type(text).__name__}")
    words = text.lower().split()
    if not words:
        return Attributes()
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise HastenError(f"{name}: unknown word {unknown[0]!r} in {text!r}; the captions use: {', '.join(VOCABULARY)}")
    match = re.fullmatch(r"a (?:(small|large) )?(?:(\w+) )?(circle|square|triangle|shape)(?: (.+))?", " ".join(words))
    colour = match.group(2) if match else None
    place = match.group(4) if match else None
    if not match or (colour is not None and colour not in COLOURS) or (place and place not in _PLACE_PATTERNS):
        raise HastenError(f"{name}: {text!r} is not a caption of the grammar "
                          f"'a [small|large] [colour] circle|square|triangle|shape [at the top left|...|on the right]'")
    row, col = _PLACE_PATTERNS[place] if place else (None, None)
    shape = None if match.group(3) == "shape" else match.group(3)
    return Attributes(colour, shape, row, col, match.group(1))


def random_attributes(rng: np.random.Generator) -> Attributes:
    """A fully specified attribute set, uniform over the 144."""
    row, col = PLACES[rng.integers(len(PLACES))]
    return Attributes(list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))], row, col,
                      SIZES[rng.integers(len(SIZES))])


def draw_shape(attrs: Attributes, rng: np.random.Generator, size: int = 64, supersample: int = 4) -> Image.Image:
    """One antialiased image of a fully specified ``attrs``; centre, side and colour jittered by ``rng``."""
    if None in (attrs.colour, attrs.shape, attrs.row, attrs.col, attrs.size):
        raise HastenError(f"attrs must name every attribute to draw a shape, got {attrs}")
    big = size * supersample
    low, high = SIDE_RANGE[attrs.size]
    side = rng.uniform(low, high) * big
    cx = ((0.25 if attrs.col == "left" else 0.75) + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)) * big
    cy = ((0.25 if attrs.row == "top" else 0.75) + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)) * big
    colour = tuple(int(np.clip(c + rng.integers(-8, 9), 0, 255)) for c in COLOURS[attrs.colour])
    image = Image.new("RGB", (big, big), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    if attrs.shape == "circle":
        pen.ellipse((x0, y0, x1, y1), fill=colour)
    elif attrs.shape == "square":
        pen.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        pen.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    return image.resize((size, size), Image.Resampling.BOX)


def generate(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, list[Attributes]]:
    """``n`` images (n, 3, size, size) in [0, 1] with their attributes, drawn uniformly from the 144 classes."""
    if not isinstance(n, int) or n < 1:
        raise HastenError(f"n must be an integer >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    attrs = [random_attributes(rng) for _ in range(n)]
    pixels = np.stack([np.asarray(draw_shape(a, rng, size)) for a in attrs])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255), attrs


# --- reading an image back -------------------------------------------------------------------------------------

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)
#: how far from white each palette colour is (255 - its smallest channel): the ink depth of a full pixel
_DEPTH = 255 - _PALETTE.min(axis=1)
#: a pixel is ink from this far from white on (0..255)
INK_THRESHOLD = 60


def _as_array(images, name: str = "images") -> np.ndarray:
    """``images`` as float64 (n, H, W, 3) in 0..255: PIL images, a tensor (n, 3, H, W) in [0, 1] or an array."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, Image.Image) for i in images):
        arrays = [np.asarray(i.convert("RGB"), dtype=np.float64) for i in images]
        if len({a.shape for a in arrays}) != 1:
            raise HastenError(f"{name} must all have one size, got {sorted({a.shape[:2] for a in arrays})}")
        return np.stack(arrays)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise HastenError(f"{name} must be a tensor (n, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        array = images.detach().float().cpu().permute(0, 2, 3, 1).numpy().astype(np.float64) * 255
    elif isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[3] != 3:
            raise HastenError(f"{name} must be an array (n, H, W, 3), got shape {images.shape}")
        array = images.astype(np.float64) * (1 if images.dtype == np.uint8 else 255)
    else:
        raise HastenError(f"{name} must be PIL images, a tensor (n, 3, H, W) or an array (n, H, W, 3), "
                          f"got {type(images).__name__}")
    if array.shape[0] == 0 or min(array.shape[1:3]) < 16:
        raise HastenError(f"{name} must hold at least one image of at least 16x16, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise HastenError(f"{name} holds NaN or Inf")
    return np.clip(array, 0, 255)


def read_image(pixels: np.ndarray) -> Attributes:
    """The attributes one image (H, W, 3) in 0..255 shows; ``Attributes()`` where it has no ink."""
    height, width = pixels.shape[:2]
    depth = 255 - pixels.min(axis=2)
    ink = depth > INK_THRESHOLD
    if ink.sum() < 4:
        return Attributes()
    core = depth >= 0.75 * depth[ink].max()
    mean = pixels[core].mean(axis=0)
    index = int(np.argmin(((_PALETTE - mean) ** 2).sum(axis=1)))
    colour = list(COLOURS)[index]
    alpha = np.clip(depth / _DEPTH[index], 0, 1) * ink
    area = alpha.sum()
    ys, xs = np.mgrid[0:height, 0:width]
    cy, cx = (alpha * (ys + 0.5)).sum() / area, (alpha * (xs + 0.5)).sum() / area
    # the box: its width is the most ink a row holds, its height the most a column holds (a sum, so
    # antialiased edges and stray pixels move it little)
    fill = area / max(1e-6, alpha.sum(axis=1).max() * alpha.sum(axis=0).max())
    shape = min(FILL, key=lambda s: abs(math.log(fill / FILL[s])))
    side = math.sqrt(area / FILL[shape]) / math.sqrt(height * width)
    size = "small" if side < (SIDE_RANGE["small"][1] + SIDE_RANGE["large"][0]) / 2 else "large"
    return Attributes(colour, shape, "top" if cy < height / 2 else "bottom", "left" if cx < width / 2 else "right",
                      size)


def read_attributes(images) -> list[Attributes]:
    """What each image shows: PIL images, a tensor (n, 3, H, W) in [0, 1] or an array (n, H, W, 3)."""
    return [read_image(p) for p in _as_array(images)]


def _parse_prompts(prompts: Sequence[str], n: int) -> list[Attributes]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise HastenError(f"prompts must be a list of captions, one per image, got {type(prompts).__name__}")
    if len(prompts) != n:
        raise HastenError(f"prompts must hold one caption per image: {n} images, {len(prompts)} prompts")
    return [parse_caption(p, f"prompts[{i}]") for i, p in enumerate(prompts)]


def adherence_breakdown(images, prompts: Sequence[str]) -> dict[str, float | int]:
    """How often the images show what their prompts ask: ``all`` (every named attribute right), per attribute
    (``colour``, ``shape``, ``position``, ``size``: over the prompts that name it), and ``n``.

    A prompt that names only the row ("at the top") is checked on the row alone.
    """
    array = _as_array(images)
    asked = _parse_prompts(prompts, len(array))
    seen = [read_image(p) for p in array]
    hits = {a: [] for a in ATTRIBUTES}
    every = []
    for want, got in zip(asked, seen):
        checks = {
            "colour": None if want.colour is None else want.colour == got.colour,
            "shape": None if want.shape is None else want.shape == got.shape,
            "position": None if want.row is None and want.col is None else
            (want.row in (None, got.row) and want.col in (None, got.col) and got.row is not None),
            "size": None if want.size is None else want.size == got.size,
        }
        for attribute, ok in checks.items():
            if ok is not None:
                hits[attribute].append(ok)
        every.append(all(ok for ok in checks.values() if ok is not None))
    out: dict[str, float | int] = {"all": float(np.mean(every)), "n": len(every)}
    out.update({a: float(np.mean(v)) for a, v in hits.items() if v})
    return out


def adherence(images, prompts: Sequence[str]) -> float:
    """The fraction of images that show every attribute their prompt names (see :func:`adherence_breakdown`)."""
    return float(adherence_breakdown(images, prompts)["all"])
