"""Thin-lens defocus: circle of confusion, and layered rendering of a scene at any focus.

Derivation of the blur. A thin lens of focal length f focused at object distance s = 1/v puts
the sensor at s' = f / (1 - f v). An object at depth d images at d' with 1/d' = 1/f - 1/d. The
cone of light through the aperture A = f / N converges at d' and has, at the sensor, diameter

    b = A |s' - d'| / d' = A s' |1/d' - 1/s'| = A f |v - 1/d| / (1 - f v),

so the blur is linear in the vergence error |v - 1/d| (diopters) and grows slightly with v.
In pixels it is b / pixel_pitch.

Default rig. The paper's lens (100 mm, f/1.2) gives b = 8.3 mm x |dv| / (1 - 0.1 v); on a real
sensor that is hundreds of pixels, far beyond what our 128..346 px images can show. We keep the
paper's lens and diopter geometry and scale the pixel pitch instead, so that the worst case of
a focus range of [0.5, 3.5] dpt (focus at 3.5 dpt, object at 0.5 dpt) has a blur radius of 10 px
at 256 px width (pitch 1.92 mm; proportionally smaller for wider images). A 0.3..2 m scene then
sees blur radii from 0 up to 6.5..10 px depending on the focus.

Rendering. Each layer is split into a few depth slices with tent weights in vergence (one slice
for a fronto-parallel layer); every slice's premultiplied colour and alpha is Fourier
transformed ONCE, and a render at any focus is then a sum of (slice spectrum x disk OTF) and one
inverse FFT per layer. Slices of one layer add (a surface does not occlude itself); layers are
composited back to front with "over". Disk OTFs are cached on a 0.25 px diameter grid and
blended linearly between grid points, so intensity changes smoothly with focus (a stepwise
kernel would make the event sensor fire in bursts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

REC709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
"""Luminance weights of linear RGB (the event sensor's spectral response, CONTRACT section 1)."""

DIAMETER_STEP_PX = 0.25
"""Grid of cached disk diameters; renders blend the two neighbouring OTFs."""


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 luminance of linear RGB (..., 3) -> (...), float32."""
    return np.tensordot(np.asarray(rgb, dtype=np.float32), REC709, axes=([-1], [0])).astype(np.float32)


@dataclass(frozen=True)
class ThinLens:
    focal_length_m: float = 0.1
    f_number: float = 1.2
    pixel_pitch_m: float = 1.92e-3

    def __post_init__(self):
        if not (self.focal_length_m > 0 and self.f_number > 0 and self.pixel_pitch_m > 0):
            raise ValueError(f"ThinLens parameters must be positive, got {self}")

    @property
    def aperture_m(self) -> float:
        return self.focal_length_m / self.f_number

    @classmethod
    def default(cls, width_px: int = 256, max_radius_px: float = 10.0,
                near_dpt: float = 3.5, far_dpt: float = 0.5) -> ThinLens:
        """The paper's 100 mm f/1.2 lens with the pitch scaled so that the worst blur of the
        [far_dpt, near_dpt] range has radius max_radius_px at width_px (see module doc)."""
        return cls.for_worst_blur(max_radius_px * float(width_px) / 256.0, near_dpt, far_dpt)

    @classmethod
    def for_worst_blur(cls, radius_px: float, near_dpt: float, far_dpt: float,
                       focal_length_m: float = 0.1, f_number: float = 1.2) -> ThinLens:
        """A lens whose worst blur over the focus range [far_dpt, near_dpt] (focused at one end,
        object at the other) has this radius in pixels: the pixel pitch follows."""
        lens = cls(focal_length_m=focal_length_m, f_number=f_number, pixel_pitch_m=1.0)
        worst_m = max(float(lens.blur_diameter_m(far_dpt, near_dpt)),
                      float(lens.blur_diameter_m(near_dpt, far_dpt)))
        return cls(focal_length_m=focal_length_m, f_number=f_number,
                   pixel_pitch_m=worst_m / (2.0 * float(radius_px)))

    def blur_diameter_m(self, object_dpt, focus_dpt) -> np.ndarray:
        """Blur-circle diameter on the sensor (metres) for objects at vergence object_dpt."""
        f = self.focal_length_m
        focus_dpt = np.asarray(focus_dpt, dtype=np.float64)
        if np.any(f * focus_dpt >= 1.0):
            raise ValueError(f"focus {np.max(focus_dpt)} dpt is inside the focal length ({f} m)")
        return self.aperture_m * f * np.abs(focus_dpt - np.asarray(object_dpt)) / (1.0 - f * focus_dpt)

    def coc_px(self, depth_m, focus_dpt) -> np.ndarray:
        """Circle-of-confusion diameter in pixels; depth may be inf (vergence 0)."""
        with np.errstate(divide="ignore"):
            object_dpt = 1.0 / np.asarray(depth_m, dtype=np.float64)
        return self.blur_diameter_m(object_dpt, focus_dpt) / self.pixel_pitch_m

    def coc_px_dpt(self, object_dpt, focus_dpt) -> np.ndarray:
        """Circle-of-confusion diameter in pixels for an object given as a vergence."""
        return self.blur_diameter_m(object_dpt, focus_dpt) / self.pixel_pitch_m


# ----------------------------------------------------------------------------------------------
# Disk kernels and their transfer functions

def disk_kernel(diameter_px: float, supersample: int = 8) -> np.ndarray:
    """The blur of a uniform disk between two pixel grids, normalised to sum 1.

    A texture pixel is a unit square of constant radiance and a sensor pixel integrates over a
    unit square, so the kernel between the grids is disk (x) box (x) box: the disk convolved with
    a tent of half-width 1 px in x and in y, sampled at integer offsets. At diameter 0 it is the
    identity, and it widens continuously from there; a bare, pixel-sampled disk stays the
    identity up to about 1.1 px, which leaves a band of focus around every depth equally sharp.
    """
    radius = 0.5 * max(float(diameter_px), 0.0)
    if radius < 1e-3:
        return np.ones((1, 1), dtype=np.float64)
    half = int(math.ceil(radius)) + 1
    step = min(1.0 / supersample, radius / 4.0)  # small disks need finer samples
    fine = np.arange(-radius, radius + 0.5 * step, step)  # sub-pixel sample points across the disk
    fine = fine - fine.mean()
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius * radius
    tent = np.maximum(0.0, 1.0 - np.abs(np.arange(-half, half + 1)[:, None] - fine[None, :]))
    kernel = tent @ inside.astype(np.float64) @ tent.T
    return kernel / kernel.sum()


@lru_cache(maxsize=256)
def _disk_otf(step_index: int, shape: tuple[int, int]) -> np.ndarray:
    """Real OTF (rfft2 layout) of the disk of diameter step_index * DIAMETER_STEP_PX."""
    kernel = disk_kernel(step_index * DIAMETER_STEP_PX)
    half = kernel.shape[0] // 2
    if kernel.shape[0] > min(shape):
        raise ValueError(f"blur diameter {step_index * DIAMETER_STEP_PX} px exceeds the padded image {shape}")
    grid = np.zeros(shape, dtype=np.float64)
    offs = np.arange(-half, half + 1)
    grid[np.ix_(offs % shape[0], offs % shape[1])] = kernel
    otf = sfft.rfft2(grid, workers=1).real.astype(np.float32)  # symmetric kernel: real OTF
    otf.setflags(write=False)
    return otf


def disk_otf(diameter_px: float, shape: tuple[int, int]) -> np.ndarray:
    """OTF of a disk of any diameter: linear blend of the two cached neighbours on the grid."""
    q = max(float(diameter_px), 0.0) / DIAMETER_STEP_PX
    i0 = int(math.floor(q))
    frac = q - i0
    otf0 = _disk_otf(i0, tuple(shape))
    if frac < 1e-6:
        return otf0
    return (1.0 - frac) * otf0 + frac * _disk_otf(i0 + 1, tuple(shape))


# ----------------------------------------------------------------------------------------------
# Layered renderer

class FocalRenderer:
    """Renders one scene at many focus settings; the per-scene FFTs are paid once.

    focus_range_dpt bounds the focus settings that will be asked for (it sizes the padding
    that keeps the circular FFT from wrapping blur around the image border).
    """

    def __init__(self, scene, lens: ThinLens | None = None,
                 focus_range_dpt: tuple[float, float] | None = None, slice_px: float = 1.0,
                 max_slices: int = 24):
        self.scene = scene
        self.lens = lens if lens is not None else ThinLens.default(scene.width)
        vergence = scene.vergence()  # L x H x W, 0 at infinity
        v_lo, v_hi = float(np.min(vergence)), float(np.max(vergence))
        if focus_range_dpt is None:
            focus_range_dpt = (0.0, max(4.0, v_hi + 0.5))
        self.focus_range_dpt = (float(min(focus_range_dpt)), float(max(focus_range_dpt)))
        f_lo, f_hi = self.focus_range_dpt
        worst = max(float(self.lens.coc_px_dpt(v, f)) for v in (v_lo, v_hi) for f in (f_lo, f_hi))
        self.pad = int(math.ceil(worst / 2.0)) + 2
        h, w = scene.height, scene.width
        self.fft_shape = (sfft.next_fast_len(h + 2 * self.pad, real=True),
                          sfft.next_fast_len(w + 2 * self.pad, real=True))
        # Blur per dpt of vergence error at the strongest focus: sets the slice spacing.
        px_per_dpt = float(self.lens.coc_px_dpt(f_hi - 1.0, f_hi))
        self._layers = []
        for i in range(scene.n_layers):
            self._layers.append(self._slice_layer(i, vergence[i], px_per_dpt, slice_px, max_slices))
        self._spectra_lum: list[np.ndarray | None] = [None] * scene.n_layers
        self._spectra_rgb: list[np.ndarray | None] = [None] * scene.n_layers

    def _slice_layer(self, i, vergence, px_per_dpt, slice_px, max_slices):
        alpha = self.scene.alpha[i]
        covered = alpha > 0
        vals = vergence[covered] if np.any(covered) else vergence.ravel()
        v_lo, v_hi = float(vals.min()), float(vals.max())
        n = int(math.ceil((v_hi - v_lo) * px_per_dpt / slice_px)) + 1
        n = int(np.clip(n, 1, max_slices))
        opaque = bool(np.all(alpha >= 1.0))
        if n == 1:
            centers = np.array([0.5 * (v_lo + v_hi)])
            weights = alpha[None].astype(np.float32)
        else:
            centers = np.linspace(v_lo, v_hi, n)
            pos = np.clip((vergence - v_lo) / (v_hi - v_lo) * (n - 1), 0, n - 1)
            k = np.minimum(np.floor(pos).astype(np.int64), n - 2)
            frac = (pos - k).astype(np.float32)
            weights = np.zeros((n,) + vergence.shape, dtype=np.float32)
            rows, cols = np.indices(vergence.shape)
            weights[k, rows, cols] = (1.0 - frac) * alpha
            weights[k + 1, rows, cols] += frac * alpha
        return {"centers": centers, "weights": weights, "opaque": opaque}

    def _spectra(self, i: int, rgb: bool) -> np.ndarray:
        """Slices x channels x rfft2 of the padded premultiplied colour (then alpha)."""
        cache = self._spectra_rgb if rgb else self._spectra_lum
        if cache[i] is None:
            layer = self._layers[i]
            albedo = self.scene.albedo[i]
            colour = albedo if rgb else luminance(albedo)[..., None]
            chans = [layer["weights"][..., None] * colour[None]]  # S x H x W x C
            if not layer["opaque"]:
                chans.append(layer["weights"][..., None])
            stack = np.concatenate(chans, axis=-1).transpose(0, 3, 1, 2)  # S x C x H x W
            p = self.pad
            padded = np.pad(stack, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
            spec = sfft.rfft2(padded, s=self.fft_shape, workers=1).astype(np.complex64)
            cache[i] = spec
        return cache[i]

    def _check_focus(self, focus_dpt: float):
        lo, hi = self.focus_range_dpt
        if not (lo - 1e-9 <= focus_dpt <= hi + 1e-9):
            raise ValueError(f"focus {focus_dpt} dpt outside this renderer's range [{lo}, {hi}]")

    def _render(self, focus_dpt: float, rgb: bool) -> np.ndarray:
        self._check_focus(focus_dpt)
        h, w, p = self.scene.height, self.scene.width, self.pad
        out = None
        for i, layer in enumerate(self._layers):
            spec = self._spectra(i, rgb)
            diam = self.lens.coc_px_dpt(layer["centers"], focus_dpt)
            acc = None
            for s, d in enumerate(diam):
                term = spec[s] * disk_otf(float(d), self.fft_shape)[None]
                acc = term if acc is None else acc + term
            img = sfft.irfft2(acc, s=self.fft_shape, workers=1)[:, p:p + h, p:p + w]
            if layer["opaque"]:
                colour, alpha = img, None
            else:
                colour, alpha = img[:-1], np.clip(img[-1], 0.0, 1.0)
            if out is None or alpha is None:
                out = colour.copy()
            else:
                out = colour + (1.0 - alpha)[None] * out
        out = np.maximum(out, 0.0, out=out)
        return out.transpose(1, 2, 0) if rgb else out[0]

    def render(self, focus_dpt: float) -> np.ndarray:
        """H x W x 3 float32 linear RGB, defocused for focus_dpt."""
        return self._render(float(focus_dpt), rgb=True).astype(np.float32, copy=False)

    def render_luminance(self, focus_dpt: float) -> np.ndarray:
        """H x W float32 Rec. 709 luminance at focus_dpt (half the work of render)."""
        return self._render(float(focus_dpt), rgb=False).astype(np.float32, copy=False)

    def render_many(self, focus_list, luminance_only: bool = False) -> np.ndarray:
        """N x H x W x 3 (or N x H x W) for the focus settings in focus_list."""
        focus_list = np.asarray(focus_list, dtype=np.float64).ravel()
        shape = (self.scene.height, self.scene.width) + (() if luminance_only else (3,))
        out = np.empty((focus_list.size,) + shape, dtype=np.float32)
        for n, v in enumerate(focus_list):
            out[n] = self._render(float(v), rgb=not luminance_only)
        return out


def render(scene, focus_dpt: float, lens: ThinLens | None = None) -> np.ndarray:
    """One defocused H x W x 3 image (builds a throw-away renderer: use FocalRenderer for many)."""
    focus = float(focus_dpt)
    return FocalRenderer(scene, lens, focus_range_dpt=(min(0.0, focus), max(focus, 0.0))).render(focus)


def render_many(scene, focus_list, lens: ThinLens | None = None, luminance_only: bool = False) -> np.ndarray:
    """Focal stack N x H x W x 3 (or N x H x W luminance) of scene for each focus in focus_list."""
    focus_list = np.asarray(focus_list, dtype=np.float64).ravel()
    rng = (min(0.0, float(focus_list.min())), max(0.0, float(focus_list.max())))
    return FocalRenderer(scene, lens, focus_range_dpt=rng).render_many(focus_list, luminance_only)
