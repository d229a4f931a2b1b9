"""Synthetic scenes for the focal-sweep simulator: textured layers with depth and occlusion.

A Scene is a stack of layers, back to front. Each layer has a per-pixel albedo (linear RGB in
[0, 1]), an alpha (coverage, for occlusion) and a depth in metres (inf = at infinity, e.g. sky).
Fronto-parallel layers have constant depth; slanted planes have inverse depth linear in image
coordinates (which is what a tilted plane under perspective gives).

Textures come from images that ship inside installed packages (scikit-image's data folder,
matplotlib's sample data) and from procedural generators. The pool is split by name so that
training and validation never share a texture source (textures="train" | "val" | "all").
Everything random is drawn from the caller's numpy Generator, so a seed reproduces a scene.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

SCENE_KINDS = ("layers", "slanted", "mixed", "continuous")

# Texture pool, split by source so training and validation stay disjoint.
_SKIMAGE_TRAIN = ("astronaut.png", "chelsea.png", "brick.png", "grass.png", "camera.png", "coins.png",
                  "motorcycle_left.png", "ihc.png", "text.png", "cell.png")
_SKIMAGE_VAL = ("coffee.png", "rocket.jpg", "gravel.png", "moon.png", "page.png")
_MPL_TRAIN: tuple[str, ...] = ()
_MPL_VAL = ("grace_hopper.jpg",)
_PROC_TRAIN = ("noise", "checker", "blobs")
_PROC_VAL = ("stripes",)
_PROC_SPARSE = ("dots",)
PROCEDURAL_FRACTION = 0.3
"""Probability that a layer's texture is procedural rather than an image."""


def _image_paths() -> dict[str, str]:
    """name -> file path of the bundled images that are actually present."""
    paths: dict[str, str] = {}
    try:
        import skimage.data

        root = os.path.dirname(skimage.data.__file__)
        for name in _SKIMAGE_TRAIN + _SKIMAGE_VAL:
            path = os.path.join(root, name)
            if os.path.exists(path):
                paths[name] = path
    except ImportError:
        pass
    try:
        from matplotlib import cbook

        for name in _MPL_TRAIN + _MPL_VAL:
            try:
                path = cbook.get_sample_data(name, asfileobj=False)
            except (OSError, ValueError):
                continue
            if path and os.path.exists(path):
                paths[name] = str(path)
    except ImportError:
        pass
    return paths


def texture_pool(textures: str = "all") -> list[str]:
    """Texture names available for a split: image file names and 'proc:<kind>' generators."""
    if textures == "sparse":  # a separate family: sparse dots on a plain ground
        return [f"proc:{p}" for p in _PROC_SPARSE]
    if textures not in ("train", "val", "all"):
        raise ValueError(f"textures must be 'train', 'val', 'all' or 'sparse', got {textures!r}")
    present = _image_paths()
    images = {"train": _SKIMAGE_TRAIN + _MPL_TRAIN, "val": _SKIMAGE_VAL + _MPL_VAL}
    procs = {"train": _PROC_TRAIN, "val": _PROC_VAL}
    splits = ("train", "val") if textures == "all" else (textures,)
    names = [n for s in splits for n in images[s] if n in present]
    names += [f"proc:{p}" for s in splits for p in procs[s]]
    return names


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


@lru_cache(maxsize=32)
def load_texture(name: str) -> np.ndarray:
    """A bundled image as linear RGB float32 (read-only, cached); grey images get 3 channels."""
    from skimage import io

    paths = _image_paths()
    if name not in paths:
        raise KeyError(f"texture image {name!r} is not installed (have: {sorted(paths)})")
    img = io.imread(paths[name])
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    img = img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    out = srgb_to_linear(img)
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------------------------
# Texture sampling

def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    down = img.shape[0] > shape[0] or img.shape[1] > shape[1]
    return resize(img, shape, order=1, anti_aliasing=down, preserve_range=True).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.03, 1.0, 3).astype(np.float32) ** 1.5


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two colours whose luminances differ by a factor 2.5..10, so patterns survive as events."""
    c0, c1 = _random_colour(rng), _random_colour(rng)
    w = np.array([0.2126, 0.7152, 0.0722], np.float32)
    ratio = rng.uniform(2.5, 10.0)
    lum0, lum1 = float(c0 @ w) + 1e-4, float(c1 @ w) + 1e-4
    if lum0 > lum1:
        c0, c1, lum0, lum1 = c1, c0, lum1, lum0
    c0 = c0 * min(lum1 / (ratio * lum0), 1.0)
    return c0.astype(np.float32), c1.astype(np.float32)


def _disc_windows(yy, xx, cy, cx, radii):
    """For each disc k inside the image: (k, its bounding window, distance of the window's
    pixels from the disc's centre), so discs are drawn without touching the whole image."""
    h, w = yy.shape
    for k in range(len(radii)):
        y0, y1 = int(max(cy[k] - radii[k] - 1, 0)), int(min(cy[k] + radii[k] + 2, h))
        x0, x1 = int(max(cx[k] - radii[k] - 1, 0)), int(min(cx[k] + radii[k] + 2, w))
        if y0 >= y1 or x0 >= x1:
            continue
        win = np.s_[y0:y1, x0:x1]
        yield k, win, np.hypot(yy[win] - cy[k], xx[win] - cx[k])


def _procedural(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    c0, c1 = _contrasting_colours(rng)
    if kind == "noise":
        field_ = np.zeros((h, w), np.float32)
        cell = max(h, w) / rng.uniform(4.0, 10.0)
        while cell >= 2.0:
            gh, gw = int(math.ceil(h / cell)) + 2, int(math.ceil(w / cell)) + 2
            grid = rng.standard_normal((gh, gw)).astype(np.float32)
            up = ndimage.zoom(grid, cell, order=3, mode="nearest")[:h, :w]
            amp = cell ** 0.4
            field_ += amp * up
            cell /= 2.0
        lo, hi = np.percentile(field_, [2.0, 98.0])
        t = np.clip((field_ - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    elif kind == "checker":
        period = rng.uniform(6.0, 40.0)
        s = np.sin(np.pi * u / period) * np.sin(np.pi * v / period)
        t = np.clip(0.5 + s * period / np.pi, 0.0, 1.0)
    elif kind == "stripes":
        period = rng.uniform(5.0, 40.0)
        s = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        hardness = rng.uniform(0.2, 1.0) * period / (2 * np.pi)
        t = np.clip(0.5 + s * hardness, 0.0, 1.0)
    elif kind == "dots":  # sparse small dots (1-4 % of the area) on a plain ground
        img = np.broadcast_to(c0, (h, w, 3)).copy()
        r_mean = rng.uniform(0.8, 3.0)
        n = int(rng.uniform(0.01, 0.04) * h * w / (np.pi * r_mean ** 2))
        cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
        radii = r_mean * rng.uniform(0.6, 1.4, n)
        dist = np.full((h, w), np.inf, np.float32)  # to the nearest dot's rim
        for k, win, d in _disc_windows(yy, xx, cy, cx, radii):
            dist[win] = np.minimum(dist[win], d - radii[k])
        a = np.clip(0.5 - dist, 0.0, 1.0)[..., None]
        return (a * c1 + (1 - a) * img).astype(np.float32)
    elif kind == "blobs":
        img = np.broadcast_to(c0, (h, w, 3)).copy()
        r_mean = rng.uniform(3.0, 14.0)
        n = int(0.4 * h * w / (np.pi * r_mean ** 2))
        cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
        radii = r_mean * rng.uniform(0.5, 1.5, n)
        colours = rng.uniform(0.03, 1.0, (n, 3)).astype(np.float32) ** 1.5
        for k, win, d in _disc_windows(yy, xx, cy, cx, radii):  # a few hundred small windows
            a = np.clip(radii[k] - d + 0.5, 0.0, 1.0)[..., None]
            img[win] = a * colours[k] + (1 - a) * img[win]
        return img
    else:
        raise ValueError(f"unknown procedural texture {kind!r}")
    return (c0 + (c1 - c0) * t[..., None]).astype(np.float32)


def sample_texture(rng: np.random.Generator, height: int, width: int, textures: str = "all",
                   name: str | None = None) -> tuple[np.ndarray, str]:
    """A random crop (random scale, flip, rotation, gain, tint) of a pool texture: (H x W x 3, name)."""
    if name is None:
        pool = texture_pool(textures)
        procs = [n for n in pool if n.startswith("proc:")]
        images = [n for n in pool if not n.startswith("proc:")]
        use_proc = not images or rng.random() < PROCEDURAL_FRACTION
        choices = procs if use_proc else images
        name = choices[int(rng.integers(len(choices)))]
    if name.startswith("proc:"):
        tex = _procedural(name[5:], rng, height, width)
    else:
        src = load_texture(name)
        sh, sw = src.shape[:2]
        min_scale = max(height / sh, width / sw)  # output px per source px when the crop is the whole image
        scale = min_scale * rng.uniform(1.0, 2.5)
        ch, cw = min(sh, int(round(height / scale))), min(sw, int(round(width / scale)))
        y0 = int(rng.integers(0, sh - ch + 1))
        x0 = int(rng.integers(0, sw - cw + 1))
        tex = _resize(src[y0:y0 + ch, x0:x0 + cw], (height, width))
        if rng.random() < 0.5:
            tex = tex[:, ::-1]
        if rng.random() < 0.5:
            tex = tex[::-1]
        grey = np.ptp(tex.reshape(-1, 3).mean(axis=0)) < 1e-3 and np.allclose(tex[..., 0], tex[..., 1])
        tint = (1.0 + (0.35 if grey else 0.12) * rng.standard_normal(3)).clip(0.4, 1.6)
        tex = tex * (tint / tint.max()).astype(np.float32)
    gain = rng.uniform(0.4, 1.0) / max(float(np.percentile(tex, 99.5)), 1e-3)
    tex = np.clip(tex * min(gain, 4.0), 0.0, 1.0).astype(np.float32)
    return np.ascontiguousarray(tex), name


# ----------------------------------------------------------------------------------------------
# Shapes (occluder masks), anti-aliased by a signed distance in pixels

def random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random foreground silhouette (star-convex blob, ellipse or rotated rectangle), H x W alpha."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    size = min(height, width)
    cy = rng.uniform(0.25, 0.75) * height
    cx = rng.uniform(0.25, 0.75) * width
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    a, b = rng.uniform(0.15, 0.35, 2) * size
    kind = rng.choice(["star", "ellipse", "rect"])
    if kind == "rect":
        dist = np.minimum(a - np.abs(u), b - np.abs(v))
    else:
        rho = np.hypot(u / a, v / b)
        theta = np.arctan2(v / b, u / a)
        radius = np.ones_like(theta)
        if kind == "star":
            for k in range(2, 6):
                radius += rng.uniform(0, 0.25 / (k - 1)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        dist = (radius - rho) * min(a, b)
    return np.clip(dist + 0.5, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Scenes

@dataclass
class Scene:
    """Layers back to front (layer 0 = background)."""

    albedo: np.ndarray
    """L x H x W x 3 float32 linear RGB in [0, 1]."""
    alpha: np.ndarray
    """L x H x W float32 coverage in [0, 1]."""
    depth_m: np.ndarray
    """L x H x W float32 metres, inf for a layer at infinity."""
    kind: str = "custom"
    textures: list[str] = field(default_factory=list)

    def __post_init__(self):
        n, h, w = self.alpha.shape
        if self.albedo.shape != (n, h, w, 3) or self.depth_m.shape != (n, h, w):
            raise ValueError(f"scene arrays disagree: albedo {self.albedo.shape}, alpha {self.alpha.shape}, "
                             f"depth {self.depth_m.shape}")
        if np.any(~(self.depth_m > 0)):
            raise ValueError("scene depths must be positive (inf allowed)")

    @property
    def n_layers(self) -> int:
        return int(self.alpha.shape[0])

    @property
    def height(self) -> int:
        return int(self.alpha.shape[1])

    @property
    def width(self) -> int:
        return int(self.alpha.shape[2])

    def vergence(self) -> np.ndarray:
        """L x H x W diopters (1/depth; 0 at infinity)."""
        return (1.0 / self.depth_m.astype(np.float64)).astype(np.float32)

    def all_in_focus(self) -> np.ndarray:
        """H x W x 3: the scene with everything sharp (pinhole), composited back to front."""
        out = np.zeros(self.albedo.shape[1:], dtype=np.float32)
        for albedo, alpha in zip(self.albedo, self.alpha, strict=True):
            out = alpha[..., None] * albedo + (1.0 - alpha[..., None]) * out
        return out

    def depth_map(self) -> np.ndarray:
        """H x W metres of the front-most surface covering each pixel by >= 50 %; NaN where none
        (or where it is at infinity)."""
        out = np.full((self.height, self.width), np.nan, dtype=np.float32)
        for depth, alpha in zip(self.depth_m, self.alpha, strict=True):
            out = np.where(alpha >= 0.5, depth, out)
        out[~np.isfinite(out)] = np.nan
        return out


def fronto_scene(albedo_layers, depths_m, alphas=None) -> Scene:
    """Convenience for tests: fronto-parallel layers (back to front) at the given depths."""
    albedo = np.stack([np.asarray(a, dtype=np.float32) for a in albedo_layers])
    n, h, w, _ = albedo.shape
    alpha = np.ones((n, h, w), np.float32) if alphas is None else np.stack(alphas).astype(np.float32)
    depth = np.broadcast_to(np.asarray(depths_m, dtype=np.float32)[:, None, None], (n, h, w)).copy()
    return Scene(albedo, alpha, depth, kind="layers")


def _plane_vergence(rng, h, w, v_a, v_b) -> np.ndarray:
    """Vergence varying linearly from v_a to v_b across the image along a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    proj = xx * math.cos(angle) + yy * math.sin(angle)
    proj = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-9)
    return v_a + (v_b - v_a) * proj


def _smooth_vergence(rng, h, w, v_lo, v_hi) -> np.ndarray:
    """A smooth random vergence field (a few octaves of low-frequency noise) spanning most of
    [v_lo, v_hi]."""
    field_ = np.zeros((h, w))
    for cells in (2, 4):
        grid = rng.standard_normal((cells + 3, cells + 3))
        up = ndimage.zoom(grid, (h / cells, w / cells), order=3, mode="nearest")
        field_ += up[:h, :w] / cells
    lo, hi = np.percentile(field_, [1.0, 99.0])
    t = np.clip((field_ - lo) / max(float(hi - lo), 1e-9), 0.0, 1.0)
    a, b = rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)
    return v_lo + (v_hi - v_lo) * (a + (b - a) * t)


def _sky(rng, h, w) -> np.ndarray:
    top, bottom = _random_colour(rng) * 0.6 + 0.3, _random_colour(rng) * 0.6 + 0.3
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top + (bottom - top) * t, (h, w, 3)).astype(np.float32).clip(0, 1)


def make_scene(rng: np.random.Generator, height: int = 256, width: int = 256, kind: str = "layers",
               near_m: float = 0.3, far_m: float = 2.0, textures: str = "all",
               n_foreground: int | None = None, sky: bool = False, contrast: float = 1.0) -> Scene:
    """A random scene with surfaces between near_m and far_m.

    kind: "layers" = textured background plane + 1..2 fronto-parallel occluders nearer;
    "slanted" = one plane whose depth varies across the image; "mixed" = slanted background plus
    occluders (fronto or slightly tilted); "continuous" = one surface whose depth varies smoothly
    everywhere (a random low-frequency field over the whole range). `contrast` < 1 pulls every
    texture towards its mean colour (1: as sampled). sky=True puts a texture-poor layer at infinity behind
    everything (depth NaN in the ground truth) and turns the background into a partial layer.
    """
    if kind not in SCENE_KINDS:
        raise ValueError(f"kind must be one of {SCENE_KINDS}, got {kind!r}")
    if not (0 < near_m < far_m):
        raise ValueError(f"need 0 < near_m < far_m, got near_m={near_m}, far_m={far_m}")
    h, w = int(height), int(width)
    v_far, v_near = 1.0 / far_m, 1.0 / near_m
    span = v_near - v_far
    albedos, alphas, verg, names = [], [], [], []

    if not contrast > 0:
        raise ValueError(f"contrast must be positive, got {contrast}")

    def add(v_map, alpha, tex_name=None):
        tex, name = sample_texture(rng, h, w, textures, tex_name)
        if contrast != 1.0:
            mean = tex.reshape(-1, 3).mean(axis=0)
            tex = np.clip(mean + np.float32(contrast) * (tex - mean), 0.0, 1.0).astype(np.float32)
        albedos.append(tex)
        alphas.append(np.broadcast_to(alpha, (h, w)).astype(np.float32))
        verg.append(np.broadcast_to(v_map, (h, w)).astype(np.float64))
        names.append(name)

    if sky:
        albedos.append(_sky(rng, h, w))
        alphas.append(np.ones((h, w), np.float32))
        verg.append(np.zeros((h, w)))
        names.append("sky")

    bg_alpha = np.ones((h, w), np.float32)
    if sky:  # ground-like background: covers the image below a wavy horizon
        yy = np.arange(h, dtype=np.float32)[:, None]
        horizon = h * rng.uniform(0.25, 0.5) + 0.05 * h * np.sin(
            np.arange(w) / w * rng.uniform(2, 8) + rng.uniform(0, 6.3))[None, :]
        bg_alpha = np.clip(yy - horizon + 0.5, 0.0, 1.0).astype(np.float32)

    if kind == "slanted":
        v_a = rng.uniform(v_far, v_far + 0.3 * span)
        v_b = rng.uniform(v_far + 0.6 * span, v_near)
        if rng.random() < 0.5:
            v_a, v_b = v_b, v_a
        add(_plane_vergence(rng, h, w, v_a, v_b), bg_alpha)
        n_fg = 0 if n_foreground is None else n_foreground
        bg_front = max(v_a, v_b)
    elif kind == "continuous":
        add(_smooth_vergence(rng, h, w, v_far, v_near), bg_alpha)
        n_fg = 0 if n_foreground is None else n_foreground
        bg_front = v_near - 0.15 * span
    elif kind == "layers":
        v_bg = rng.uniform(v_far, v_far + 0.3 * span)
        add(np.full((h, w), v_bg), bg_alpha)
        n_fg = int(rng.integers(1, 3)) if n_foreground is None else n_foreground
        bg_front = v_bg
    else:  # mixed
        v_a = rng.uniform(v_far, v_far + 0.2 * span)
        v_b = rng.uniform(v_far + 0.2 * span, v_far + 0.45 * span)
        add(_plane_vergence(rng, h, w, v_a, v_b), bg_alpha)
        n_fg = int(rng.integers(1, 3)) if n_foreground is None else n_foreground
        bg_front = max(v_a, v_b)

    if n_fg:
        # Foreground vergences: spread over what is left in front, at least ~0.25 span apart.
        lo = bg_front + 0.15 * span
        slots = np.linspace(lo, v_near, n_fg + 1)
        for k in range(n_fg):
            v = rng.uniform(slots[k] + 0.25 * (slots[k + 1] - slots[k]), slots[k + 1])
            v = min(v, v_near)
            if kind == "mixed" and rng.random() < 0.5:
                tilt = 0.1 * span * rng.uniform(-1, 1)
                v_map = np.clip(_plane_vergence(rng, h, w, v - tilt, v + tilt), v_far, v_near)
            else:
                v_map = np.full((h, w), v)
            add(v_map, random_mask(rng, h, w))

    vergence = np.stack(verg)
    with np.errstate(divide="ignore"):
        depth = (1.0 / vergence).astype(np.float32)
    return Scene(np.stack(albedos), np.stack(alphas), depth, kind=kind, textures=names)
