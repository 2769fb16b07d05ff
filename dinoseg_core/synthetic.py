"""Procedurally generated aerial-like scenes with exact per-pixel ground truth, for tests and the demo.

A scene is drawn in layers, each concept a region of its own colour family *and* texture, so that even a
randomly initialised ViT separates them:

1. background: mottled grass and bare soil (low-frequency mixing, mid-frequency texture), dark tree clumps;
2. ``"water"``: one or two smooth blue blobs, darker towards the middle, soft low-frequency noise;
3. ``"field"``: rectangular fields in wheat / young-crop / rapeseed colours with row stripes (kept off water);
4. ``"road"``: grey bands 3-20 px wide (at 512 px) running edge to edge, straight or with bends; wide roads get a
   dashed centre line (labelled road);
5. ``"roof"``: terracotta-red to orange buildings 32-90 px (at 512 px), some rotated, two-tone pitched roofs,
   placed on free ground, each with a thin shadow towards the bottom right.

All sizes scale with ``size / 512``. Ground truth is exact: pixels are drawn with hard edges, and a pixel's label is
the concept drawn there last, so the label masks are mutually exclusive. Shadow pixels and background (grass,
soil, trees) belong to no concept. Everything is drawn from ``numpy.random.default_rng`` seeded per concept, so a
scene is a pure function of ``(seed, size, concepts)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinoseg_core.errors import InputError

__all__ = ["CONCEPTS", "Scene", "generate_scene", "write_demo_dataset"]

CONCEPTS: tuple[str, ...] = ("field", "water", "road", "roof")
"""Concepts :func:`generate_scene` can draw, in drawing order (later ones win where they overlap)."""

# Stage ids for per-stage random streams: leaving a concept out does not change how the others are drawn.
_STAGES = {"background": 0, "water": 1, "field": 2, "road": 3, "roof": 4}

_FIELD_COLOURS = np.array([(0.86, 0.78, 0.42), (0.56, 0.76, 0.26), (0.92, 0.85, 0.22)], np.float32)
# Tile roofs from terracotta red to orange: one concept a single reference can show (a random-init backbone
# separates colour families, so a grey flat roof would be a different concept for it).
_ROOF_COLOURS = np.array([(0.68, 0.20, 0.15), (0.86, 0.46, 0.20)], np.float32)
_ROOF_WEIGHTS = np.array([0.55, 0.45])


@dataclass(frozen=True, eq=False)
class Scene:
    """A generated scene.

    Attributes:
        image: ``float32 (H, W, 3)`` RGB in ``[0, 1]``.
        labels: concept name -> ``bool (H, W)``; mutually exclusive; one entry per drawn concept.
        seed: the seed it was generated from.
    """

    image: np.ndarray
    labels: dict[str, np.ndarray]
    seed: int

    @property
    def background(self) -> np.ndarray:
        """``bool (H, W)``: pixels of no concept (grass, soil, trees, shadows)."""
        out = np.ones(self.image.shape[:2], bool)
        for mask in self.labels.values():
            out &= ~mask
        return out


class _Canvas:
    """The image plus labels being drawn; ``paint`` enforces "last drawn wins" on the labels."""

    def __init__(self, size: int, concepts: Sequence[str]):
        self.size = size
        self.image = np.zeros((size, size, 3), np.float32)
        self.labels = {c: np.zeros((size, size), bool) for c in concepts}

    def claim(self, region: np.ndarray, concept: str | None, window: tuple[slice, slice] | None = None) -> None:
        """Give the pixels of ``region`` (bool, full size or ``window``-sized) to ``concept`` (None: to no one)."""
        win = window or (slice(None), slice(None))
        for name, mask in self.labels.items():
            sub = mask[win]
            if name == concept:
                sub |= region
            else:
                sub &= ~region

    def occupied(self) -> np.ndarray:
        out = np.zeros((self.size, self.size), bool)
        for mask in self.labels.values():
            out |= mask
        return out


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth value noise ``float32 (h, w)`` in ``[0, 1]`` with about ``cells`` features across: random lattice
    values, smoothstep-interpolated (separably, so it costs a few passes over the image)."""
    cells = max(1, int(cells))
    grid = rng.random((cells + 2, cells + 2), dtype=np.float32)
    offset = rng.random(2)

    def axis(n: int, off: float) -> tuple[np.ndarray, np.ndarray]:
        pos = np.arange(n, dtype=np.float32) * (cells / max(n, 1)) + np.float32(off)
        i0 = np.floor(pos).astype(np.intp)
        t = pos - i0
        return i0, (t * t * (3 - 2 * t)).astype(np.float32)

    y0, ty = axis(h, offset[0])
    x0, tx = axis(w, offset[1])
    rows = grid[y0] * (1 - ty)[:, None] + grid[y0 + 1] * ty[:, None]  # (h, cells + 2)
    return rows[:, x0] * (1 - tx) + rows[:, x0 + 1] * tx


def _fractal_noise(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers (each twice as fine, half as strong), ``float32 (h, w)`` in [0, 1]."""
    total = np.zeros((h, w), np.float32)
    weight = 0.0
    for i in range(octaves):
        amp = 0.5**i
        total += np.float32(amp) * _value_noise(rng, h, w, cells * 2**i)
        weight += amp
    return total / np.float32(weight)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(colour + rng.uniform(-amount, amount, 3).astype(np.float32), 0.0, 1.0)


def _window(cx: float, cy: float, radius: float, size: int) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Clip a square window around (cx, cy) to the image; return its slices and pixel coordinates."""
    y0, y1 = max(0, int(cy - radius)), min(size, int(math.ceil(cy + radius)) + 1)
    x0, x1 = max(0, int(cx - radius)), min(size, int(math.ceil(cx + radius)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    return slice(y0, y1), slice(x0, x1), yy, xx


# --- layers --------------------------------------------------------------------------------------------------------


def _draw_background(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    n = canvas.size
    grass = _jitter(rng, np.array((0.25, 0.38, 0.15), np.float32), 0.03)
    soil = _jitter(rng, np.array((0.46, 0.37, 0.24), np.float32), 0.03)
    # where soil shows through: large patches with soft edges
    mix = _fractal_noise(rng, n, n, max(2, round(3 * n / 512)), octaves=3)
    mix = np.clip((mix - 0.55) * 5.0, 0.0, 1.0)[..., None]
    image = grass * (1 - mix) + soil * mix
    # mid-frequency mottling (tufts, furrows) plus fine grain
    mottle = _fractal_noise(rng, n, n, max(4, round(24 * n / 512)), octaves=2) - 0.5
    image *= (1.0 + 0.3 * mottle)[..., None]
    image += np.float32(0.015) * rng.standard_normal((n, n, 3), dtype=np.float32)
    # tree clumps: dark green discs
    for _ in range(int(rng.integers(8, 20) * scale * scale) + 1):
        cx, cy = rng.uniform(0, n, 2)
        r = rng.uniform(3, 9) * scale + 1
        win = _window(cx, cy, r, n)
        if win is None:
            continue
        ys, xs, yy, xx = win
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        shade = 0.75 + 0.25 * np.clip(1 - ((yy - cy + r / 3) ** 2 + (xx - cx + r / 3) ** 2) / (r * r), 0, 1)
        tree = _jitter(rng, np.array((0.12, 0.24, 0.09), np.float32), 0.02)
        image[ys, xs][disc] = (tree * shade[..., None])[disc]
    canvas.image[:] = image


def _draw_water(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    n = canvas.size
    n_blobs = 1 + int(rng.random() < 0.4)
    for _ in range(n_blobs):
        radius = rng.uniform(50, 90) * scale
        aspect = rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, math.pi)
        margin = 0.6 * radius
        cx, cy = rng.uniform(margin, n - margin, 2)
        win = _window(cx, cy, radius * 1.5, n)
        if win is None:
            continue
        ys, xs, yy, xx = win
        du, dv = xx - cx, yy - cy
        u = (du * math.cos(angle) + dv * math.sin(angle)) / radius
        v = (-du * math.sin(angle) + dv * math.cos(angle)) / (radius * aspect)
        h, w = u.shape
        wobble = _fractal_noise(rng, h, w, 3, octaves=2) - 0.5
        dist = np.sqrt(u * u + v * v) + 0.45 * wobble
        blob = dist < 1.0
        base = _jitter(rng, np.array((0.11, 0.25, 0.44), np.float32), 0.03)
        depth = np.clip(1.0 - dist, 0.0, 1.0)  # 0 at the shore, larger inside
        soft = _value_noise(rng, h, w, 4) - 0.5
        colour = base * (1.0 - 0.25 * depth + 0.08 * soft)[..., None]
        colour += rng.normal(0.0, 0.006, colour.shape).astype(np.float32)
        canvas.image[ys, xs][blob] = colour[blob]
        canvas.claim(blob, "water", (ys, xs))


def _draw_fields(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    n = canvas.size
    blocked = canvas.occupied()  # water, when drawn; fields keep a gap from it
    gap = max(2, round(6 * scale))
    wanted = int(rng.integers(2, 5))
    placed = 0
    for _attempt in range(60):
        if placed >= wanted:
            break
        fw, fh = rng.uniform(70, 180, 2) * scale
        x0 = rng.uniform(-0.25 * fw, n - 0.75 * fw)
        y0 = rng.uniform(-0.25 * fh, n - 0.75 * fh)
        xa, xb = max(0, round(x0)), min(n, round(x0 + fw))
        ya, yb = max(0, round(y0)), min(n, round(y0 + fh))
        if xb - xa < 0.6 * fw or yb - ya < 0.6 * fh:
            continue
        if blocked[max(0, ya - gap): yb + gap, max(0, xa - gap): xb + gap].any():
            continue
        ys, xs = slice(ya, yb), slice(xa, xb)
        yy = np.arange(ya, yb, dtype=np.float32)[:, None]
        xx = np.arange(xa, xb, dtype=np.float32)[None, :]
        colour = _jitter(rng, _FIELD_COLOURS[rng.integers(len(_FIELD_COLOURS))], 0.02)
        colour = np.clip(colour * np.float32(rng.uniform(0.92, 1.05)), 0.0, 1.0)  # vary brightness more than hue
        period = max(3.0, rng.uniform(4, 9) * scale)
        theta = rng.choice([0.0, math.pi / 2]) + rng.uniform(-0.15, 0.15)
        phase = rng.uniform(0, 2 * math.pi)
        rows = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period) + phase)
        shade = 1.0 + rng.uniform(0.06, 0.12) * rows
        grain = rng.normal(0.0, 0.012, (yb - ya, xb - xa, 1)).astype(np.float32)  # brightness grain
        pixels = colour * shade[..., None] + grain
        canvas.image[ys, xs] = pixels
        canvas.claim(np.ones((yb - ya, xb - xa), bool), "field", (ys, xs))
        blocked[ys, xs] = True
        placed += 1


def _edge_point(rng: np.random.Generator, edge: int, n: int) -> np.ndarray:
    t = rng.uniform(0.1 * n, 0.9 * n)
    return np.array([(t, -0.05 * n), (1.05 * n, t), (t, 1.05 * n), (-0.05 * n, t)][edge], np.float32)


def _segment_distance(xx: np.ndarray, yy: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each pixel to the segment a-b, and how far along the segment its nearest point lies (pixels)."""
    d = b - a
    length = float(np.hypot(d[0], d[1])) or 1e-6
    t = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / (length * length), 0.0, 1.0)
    return np.hypot(xx - (a[0] + t * d[0]), yy - (a[1] + t * d[1])), t * np.float32(length)


def _draw_roads(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    n = canvas.size
    n_roads = int(rng.integers(1, 4))
    for i in range(n_roads):
        start_edge = int(rng.integers(4))
        # the first road crosses the scene (opposite edges) so that every scene has a long road
        end_edge = (start_edge + (2 if i == 0 else int(rng.choice([1, 2, 2, 3])))) % 4
        a, b = _edge_point(rng, start_edge, n), _edge_point(rng, end_edge, n)
        points = [a]
        n_turns = int(rng.choice([0, 1, 2], p=[0.4, 0.4, 0.2]))
        chord = b - a
        normal = np.array([-chord[1], chord[0]], np.float32) / (np.linalg.norm(chord) + 1e-6)
        for k in range(1, n_turns + 1):
            along = a + chord * (k / (n_turns + 1))
            points.append(along + normal * rng.uniform(-0.25, 0.25) * np.linalg.norm(chord))
        points.append(b)
        width = max(2.0, rng.uniform(6 if i == 0 else 3, 20) * scale)
        half = width / 2
        road = np.zeros((n, n), bool)
        centre = np.full((n, n), np.inf, np.float32)  # distance to the centre line
        along = np.zeros((n, n), np.float32)  # position along the road, for the dashes
        travelled = 0.0
        for p, q in zip(points[:-1], points[1:]):
            start = travelled
            travelled += float(np.hypot(*(q - p)))
            lo = np.floor(np.minimum(p, q) - half - 1).astype(int).clip(0, n)
            hi = np.ceil(np.maximum(p, q) + half + 2).astype(int).clip(0, n)
            if lo[0] >= hi[0] or lo[1] >= hi[1]:
                continue
            ys, xs = slice(lo[1], hi[1]), slice(lo[0], hi[0])
            yy = np.arange(lo[1], hi[1], dtype=np.float32)[:, None]
            xx = np.arange(lo[0], hi[0], dtype=np.float32)[None, :]
            dist, pos = _segment_distance(xx, yy, p, q)
            road[ys, xs] |= dist <= half
            nearer = dist < centre[ys, xs]
            centre[ys, xs][nearer] = dist[nearer]
            along[ys, xs][nearer] = pos[nearer] + np.float32(start)
        grey = rng.uniform(0.45, 0.62)
        base = np.array((grey, grey, grey + 0.02), np.float32)
        idx = np.nonzero(road)
        pixels = base + rng.normal(0.0, 0.012, (idx[0].size, 1)).astype(np.float32)
        if width >= 12 * scale and width >= 8:
            # dashed centre line, dashes and gaps of ~10 px at 512
            dash = (along[idx] // max(4, round(10 * scale))) % 2 == 0
            on_line = (centre[idx] <= max(0.75, 1.0 * scale)) & dash
            pixels[on_line] = np.float32(0.88)
        canvas.image[idx] = np.clip(pixels, 0.0, 1.0)
        canvas.claim(road, "road")


def _draw_buildings(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    n = canvas.size
    wanted = max(3, round(int(rng.integers(6, 13)) * scale * scale))
    minimum = min(3, wanted)
    shadow = max(2.0, rng.uniform(3, 5) * scale)
    sun = np.array([shadow, shadow * rng.uniform(0.6, 1.0)], np.float32)  # shadows fall to the bottom right
    gap = max(2, round(4 * scale))
    placed = 0
    # first on free ground only; if that leaves too few buildings, also on fields (farm buildings)
    for allow_fields in (False, True):
        blocked = canvas.occupied() if not allow_fields else _blocking(canvas, exclude=("field",))
        for _attempt in range(400):
            if placed >= wanted or (allow_fields and placed >= minimum):
                break
            long_side = rng.uniform(32, 90) * scale
            short_side = rng.uniform(max(18 * scale, 0.45 * long_side), long_side)
            a, b = max(3.0, long_side / 2), max(3.0, short_side / 2)
            angle = rng.uniform(-math.pi / 4, math.pi / 4) if rng.random() < 0.4 else rng.choice([0.0, math.pi / 2])
            reach = math.hypot(a, b)
            cx, cy = rng.uniform(reach, n - reach, 2)
            win = _window(cx + sun[0] / 2, cy + sun[1] / 2, reach + shadow + gap + 1, n)
            if win is None:
                continue
            ys, xs, yy, xx = win
            if blocked[ys, xs].any():
                # cheap exact-enough test: the whole window (footprint + shadow + gap) must be free
                continue
            roof, side = _rotated_rect(xx - cx, yy - cy, a, b, angle)
            cast, _ = _rotated_rect(xx - cx - sun[0], yy - cy - sun[1], a, b, angle)
            cast &= ~roof
            canvas.image[ys, xs][cast] *= np.float32(0.42)
            canvas.claim(cast, None, (ys, xs))

            colour = _jitter(rng, _ROOF_COLOURS[rng.choice(len(_ROOF_COLOURS), p=_ROOF_WEIGHTS)], 0.04)
            h, w = roof.shape
            # pitched tile roof: sunny and shaded halves, faint tile rows
            u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
            tiles = 0.03 * np.sin(u * (2 * math.pi / max(3.0, 4 * scale)))
            shade = np.where(side, 1.07, 0.86) + tiles
            pixels = colour * shade[..., None] + rng.normal(0.0, 0.01, (h, w, 1)).astype(np.float32)
            canvas.image[ys, xs][roof] = np.clip(pixels[roof], 0.0, 1.0)
            canvas.claim(roof, "roof", (ys, xs))
            blocked[ys, xs] = True
            placed += 1
        if placed >= minimum:
            break


def _blocking(canvas: _Canvas, exclude: tuple[str, ...]) -> np.ndarray:
    out = np.zeros((canvas.size, canvas.size), bool)
    for name, mask in canvas.labels.items():
        if name not in exclude:
            out |= mask
    return out


def _rotated_rect(dx: np.ndarray, dy: np.ndarray, a: float, b: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels within the rectangle of half-sizes (a along the rotated x axis, b across), and which side of its
    long axis (the ridge of a pitched roof) each pixel is on."""
    c, s = math.cos(angle), math.sin(angle)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    inside = (np.abs(u) <= a) & (np.abs(v) <= b)
    return inside, (v < 0) if a >= b else (u < 0)


_DRAW = {"water": _draw_water, "field": _draw_fields, "road": _draw_roads, "roof": _draw_buildings}
_ORDER = ("water", "field", "road", "roof")


def generate_scene(seed: int, size: int = 512, concepts: Sequence[str] = CONCEPTS) -> Scene:
    """Generate one aerial-like scene with exact labels.

    Args:
        seed: non-negative int; the scene is a pure function of ``(seed, size, concepts)``.
        size: side in pixels (square scenes), at least 64; object sizes scale with ``size / 512``.
        concepts: which of :data:`CONCEPTS` to draw (default all); each gets a ``labels`` entry.

    Returns:
        :class:`Scene` with ``image`` ``float32 (size, size, 3)`` in ``[0, 1]`` and ``labels[c]`` ``bool (size,
        size)``, mutually exclusive. Every requested concept is present: at least one field, one water body, one
        road, and three roofs (fewer only if a tiny scene has no room).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 64:
        raise InputError(f"size must be an int >= 64 (pixels per side), got {size!r}.")
    if isinstance(concepts, str):
        concepts = (concepts,)
    unknown = [c for c in concepts if c not in CONCEPTS]
    if unknown:
        raise InputError(f"Unknown concept(s) {unknown}; choose from {list(CONCEPTS)}.")
    size, seed = int(size), int(seed)
    scale = size / 512.0
    canvas = _Canvas(size, [c for c in CONCEPTS if c in concepts])
    _draw_background(canvas, np.random.default_rng([seed, _STAGES["background"]]), scale)
    for concept in _ORDER:
        if concept in concepts:
            _DRAW[concept](canvas, np.random.default_rng([seed, _STAGES[concept]]), scale)
    np.clip(canvas.image, 0.0, 1.0, out=canvas.image)
    return Scene(image=canvas.image, labels=canvas.labels, seed=seed)


def write_demo_dataset(
    out_url: str | os.PathLike[str],
    n_references: int = 1,
    n_targets: int = 4,
    size: int = 512,
    seed: int = 0,
    concept: str = "roof",
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a small in-context segmentation data set of generated scenes under ``out_url`` (any storage URL):

    - ``references/ref_000.png`` + ``references/ref_000_mask.png`` (the ``concept`` mask, 0/255 PNG), ...
    - ``targets/target_000.png``, ...
    - ``targets_gt/target_000_mask.png`` (ground truth for evaluation), ...

    Scene seeds are derived from ``seed`` (references and targets never share one). Returns a dict::

        {"root": out_url, "concept": concept, "size": size, "seed": seed,
         "references": [{"name", "image", "mask", "seed"}, ...],   # full URLs
         "targets": [{"name", "image", "gt_mask", "seed"}, ...]}
    """
    # Imported here so that generating scenes needs numpy only.
    from dinoseg_core.io import imageio, storage

    if concept not in CONCEPTS:
        raise InputError(f"Unknown concept {concept!r}; choose from {list(CONCEPTS)}.")
    for name, value, low in (("n_references", n_references, 1), ("n_targets", n_targets, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"{name} must be an int >= {low}, got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}.")
    root = os.fspath(out_url)
    base_seed = int(seed) * 100_003
    manifest: dict[str, Any] = {
        "root": root, "concept": concept, "size": int(size), "seed": int(seed), "references": [], "targets": [],
    }
    for i in range(n_references + n_targets):
        is_ref = i < n_references
        scene_seed = base_seed + i
        scene = generate_scene(scene_seed, size)
        mask = scene.labels[concept]
        if is_ref and not mask.any():  # not seen for any seed at size >= 64, but a reference must show the concept
            raise InputError(f"Scene seed {scene_seed} at size {size} has no {concept!r}; try another seed or size.")
        if is_ref:
            name = f"ref_{i:03d}"
            image_url = storage.join(root, "references", f"{name}.png")
            mask_url = storage.join(root, "references", f"{name}_mask.png")
            entry = {"name": name, "image": image_url, "mask": mask_url, "seed": scene_seed}
            manifest["references"].append(entry)
        else:
            name = f"target_{i - n_references:03d}"
            image_url = storage.join(root, "targets", f"{name}.png")
            mask_url = storage.join(root, "targets_gt", f"{name}_mask.png")
            entry = {"name": name, "image": image_url, "gt_mask": mask_url, "seed": scene_seed}
            manifest["targets"].append(entry)
        imageio.write_image_png(image_url, scene.image, storage_options)
        imageio.write_mask_png(mask_url, mask, storage_options)
    return manifest
