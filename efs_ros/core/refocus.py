"""Event-based refocusing (Equation 5 of the paper): the frame's log intensity plus the signed
event count between the frame time and any other time of the sweep.

The events of a job are binned once into per-pixel signed counts over T time bins and summed
cumulatively, so the signed count from the frame time to ANY bin edge is one subtraction, and a
stack of K refocused images is one gather plus one exp. Time 0 (the frame) is always a bin edge,
so refocusing back to the frame is exact.

The sensor sees luminance, so one per-pixel gain (from the luminance change) scales R, G and B.
Intensities are handled as `L + eps` throughout: `log(L + eps)` is the sensor's log response with
a linear region below `eps` (v2e-style sensors are linear in the dark), and the refocused colour
is `(rgb + eps) * gain - eps`, which keeps the luminance of the result consistent for any eps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LUMA_WEIGHTS = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
"""Rec. 709 weights of linear RGB: the event sensor's response is close to luminance."""

DEFAULT_LOG_EPS = 0.02
"""Offset of the log response: about the sensor's linear (dark) region, as a fraction of full scale."""

DEFAULT_THRESHOLD = 0.2
"""Contrast threshold used only when the data cannot give one (no events, no texture)."""


def luminance(frame: np.ndarray) -> np.ndarray:
    """H x W float32 luminance of an H x W (mono) or H x W x 3 (RGB) linear frame."""
    frame = np.asarray(frame, dtype=np.float32)
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame @ LUMA_WEIGHTS
    raise ValueError(f"frame must be H x W or H x W x 3, got shape {frame.shape}")


def apply_gain(frame: np.ndarray, gain: np.ndarray, eps: float = DEFAULT_LOG_EPS) -> np.ndarray:
    """Scale a frame by per-pixel luminance gains ([..., H, W]), the same for every channel; the
    result (clipped to [0, 1]) has luminance (L + eps) * gain - eps."""
    frame = np.asarray(frame, dtype=np.float32)
    g = gain if frame.ndim == 2 else gain[..., None]  # [..., H, W] gains broadcast over stacks
    out = (frame + np.float32(eps)) * g - np.float32(eps)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _check_events(events: np.ndarray, height: int, width: int) -> None:
    if events.dtype.names is None or not {"t", "x", "y", "p"} <= set(events.dtype.names):
        raise ValueError(f"events must be EVENT_DTYPE (t, x, y, p), got dtype {events.dtype}")
    if len(events) and (int(events["x"].max()) >= width or int(events["y"].max()) >= height):
        raise ValueError(f"event coordinates exceed the {width} x {height} frame "
                         f"(max x {int(events['x'].max())}, max y {int(events['y'].max())})")


def _bin_edges_s(t0: float, t1: float, n_bins: int) -> np.ndarray:
    """Edges from t0 to t1 (s), about (t1 - t0) / n_bins apart, with 0 exactly on an edge."""
    t0, t1 = min(t0, 0.0), max(t1, 0.0)
    if t1 <= t0:
        return np.array([0.0])
    width = (t1 - t0) / max(int(n_bins), 1)
    inner = width * np.arange(np.ceil(t0 / width), np.floor(t1 / width) + 1)
    edges = np.unique(np.concatenate([[t0], inner, [t1]]))
    # End bins shorter than a quarter bin only add noise to the time grid: merge them inward.
    keep = np.ones(edges.size, dtype=bool)
    if edges.size > 2 and edges[1] - edges[0] < 0.25 * width and edges[1] != 0.0:
        keep[1] = False
    if edges.size > 2 and edges[-1] - edges[-2] < 0.25 * width and edges[-2] != 0.0:
        keep[-2] = False
    return edges[keep]


class EventStack:
    """Per-pixel cumulative signed event counts at bin edges spanning a sweep.

    `cum[k, y, x]` = sum of polarities of the pixel's events with edges[0] <= t < edges[k];
    `origin` is the index of the edge at t = 0 (the frame). Events outside the span are ignored.
    """

    def __init__(self, events: np.ndarray, height: int, width: int, span_s: tuple[float, float],
                 n_bins: int = 128, max_block_elems: int = 1 << 23):
        _check_events(events, height, width)
        self.height, self.width = int(height), int(width)
        self.edges_s = _bin_edges_s(float(span_s[0]), float(span_s[1]), n_bins)
        self.origin = int(np.flatnonzero(self.edges_s == 0.0)[0])
        hw = self.height * self.width
        n_edges = self.edges_s.size
        edges_us = self.edges_s * 1e6
        t = events["t"]
        inside = (t >= edges_us[0]) & (t < edges_us[-1])
        if not inside.all():
            events = events[inside]
            t = events["t"]
        self.n_events = int(len(events))
        pix = events["y"].astype(np.int64) * self.width + events["x"].astype(np.int64)
        self.abs_count = np.bincount(pix, minlength=hw).reshape(self.height, self.width)
        """Per-pixel number of events in the span (texture/activity measure)."""
        dtype = np.int16 if self.abs_count.max(initial=0) < np.iinfo(np.int16).max else np.int32
        bins = np.searchsorted(edges_us, t, side="right") - 1
        if np.any(bins[1:] < bins[:-1]):  # unsorted input: group the events bin by bin
            order = np.argsort(bins, kind="stable")
            bins, pix, pol = bins[order], pix[order], events["p"][order]
        else:
            pol = events["p"]
        self.cum = np.zeros((n_edges, self.height, self.width), dtype=dtype)
        counts = self.cum.reshape(n_edges, hw)
        # Bin blocks keep the float64 bincount scratch small for large frames.
        block = max(1, max_block_elems // hw)
        for b0 in range(0, n_edges - 1, block):
            b1 = min(b0 + block, n_edges - 1)
            lo, hi = np.searchsorted(bins, [b0, b1])
            flat = (bins[lo:hi] - b0) * hw + pix[lo:hi]
            part = np.bincount(flat, weights=pol[lo:hi], minlength=(b1 - b0) * hw)
            counts[b0 + 1:b1 + 1] = part.reshape(b1 - b0, hw)
        for k in range(1, n_edges):  # row-wise running sum: np.cumsum on int16 is slow
            counts[k] += counts[k - 1]

    @property
    def span_s(self) -> tuple[float, float]:
        return float(self.edges_s[0]), float(self.edges_s[-1])

    @property
    def times_s(self) -> np.ndarray:
        """The bin edges (s), the times at which refocusing needs no interpolation."""
        return self.edges_s

    def _edge_position(self, times_s) -> tuple[np.ndarray, np.ndarray]:
        t = np.clip(np.asarray(times_s, dtype=np.float64), self.edges_s[0], self.edges_s[-1])
        i = np.clip(np.searchsorted(self.edges_s, t, side="right") - 1, 0, self.edges_s.size - 2)
        if self.edges_s.size == 1:
            return np.zeros_like(i), np.zeros_like(t)
        frac = (t - self.edges_s[i]) / (self.edges_s[i + 1] - self.edges_s[i])
        return i, frac

    def counts_at_edges(self, edge_index) -> np.ndarray:
        """[K, H, W] signed event sums from the frame time to the given bin edges (exact)."""
        idx = np.asarray(edge_index, dtype=np.int64)
        return (self.cum[idx].astype(np.float32) - self.cum[self.origin].astype(np.float32))

    def counts_at(self, times_s) -> np.ndarray:
        """[K, H, W] signed event sums from the frame time to each time (s), for all pixels.

        Between bin edges the sum is interpolated linearly in time (events spread evenly within a
        bin); at edges it is exact.
        """
        times = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        i, frac = self._edge_position(times)
        if self.edges_s.size == 1:
            return np.zeros((times.size, self.height, self.width), np.float32)
        lo = self.cum[i].astype(np.float32)
        hi = self.cum[i + 1].astype(np.float32)
        f = frac.astype(np.float32)[:, None, None]
        return lo + f * (hi - lo) - self.cum[self.origin].astype(np.float32)

    def counts_at_pixel_times(self, time_map_s: np.ndarray) -> np.ndarray:
        """[H, W] signed event sum from the frame time to each pixel's own time (s)."""
        tm = np.asarray(time_map_s, dtype=np.float64)
        if tm.shape != (self.height, self.width):
            raise ValueError(f"time map shape {tm.shape} != frame {(self.height, self.width)}")
        if self.edges_s.size == 1:
            return np.zeros(tm.shape, np.float32)
        i, frac = self._edge_position(tm.ravel())
        flat = self.cum.reshape(self.cum.shape[0], -1)
        cols = np.arange(flat.shape[1])
        lo = flat[i, cols].astype(np.float32)
        hi = flat[i + 1, cols].astype(np.float32)
        out = lo + frac.astype(np.float32) * (hi - lo) - flat[self.origin].astype(np.float32)
        return out.reshape(tm.shape)


class EventTimeline:
    """Every pixel's events in time order, to read its log intensity BETWEEN events.

    An event marks the moment the pixel's log intensity crossed the next level of its lattice
    (the reference +- c), so at event times the level (signed count so far, in thresholds) is
    exact, while the step function of Equation 5 is off by up to one threshold in between. The
    level between events is modelled from their timing:
    - two events of the same polarity: the intensity moved one way, a linear ramp between the two
      levels (exact for a log intensity linear in time);
    - opposite polarities: it turned in between, somewhere within a threshold of the earlier
      level, which is held;
    - before the pixel's first event its start (0), after its last event that event's level
      (continuing its trend for part of a level measured no better on simulated sweeps, and
      worse with noise events).
    Events outside span_us (the sweep) are ignored, as in EventStack.
    """

    def __init__(self, events: np.ndarray, height: int, width: int,
                 span_us: tuple[float, float] | None = None):
        _check_events(events, height, width)
        self.height, self.width = int(height), int(width)
        t = events["t"]
        if span_us is not None and len(events):
            inside = (t >= span_us[0]) & (t < span_us[1])
            if not inside.all():
                events = events[inside]
                t = events["t"]
        hw = self.height * self.width
        pix = _pixel_index(events, self.width)
        self._t_min = int(t.min()) if len(events) else 0
        self._t_span = (int(t.max()) - self._t_min + 2) if len(events) else 2
        key = pix * self._t_span + (t - self._t_min)
        order = np.argsort(key, kind="stable")
        self._key = key[order]
        self.t_us = t[order].astype(np.float64)
        pix = pix[order]
        pol = events["p"][order].astype(np.int64)
        self.first = np.searchsorted(pix, np.arange(hw), side="left")
        """Per pixel, the index of its first event (its events are first..stop-1)."""
        self.stop = np.searchsorted(pix, np.arange(hw), side="right")
        run = np.cumsum(pol)
        before = np.concatenate([[0], run])[self.first]  # running sum before each pixel's first event
        self.level = (run - before[pix]).astype(np.float64)
        """Level (signed count since the pixel's first event, inclusive) after each event."""
        self.polarity = pol.astype(np.float64)

    @property
    def n_events(self) -> int:
        return int(self.t_us.size)

    def levels_at(self, pix: np.ndarray, t_us: np.ndarray) -> np.ndarray:
        """Modelled level (in thresholds, float64) of each given pixel at each given time (us)."""
        pix = np.asarray(pix, dtype=np.int64).ravel()
        t = np.broadcast_to(np.asarray(t_us, dtype=np.float64).ravel(), pix.shape)
        if self.n_events == 0:
            return np.zeros(pix.shape)
        # Events strictly before t count (as in EventStack): the first event at or after t is
        # the first key >= the query.
        rel = np.clip(t - self._t_min, -0.5, self._t_span - 1)
        nxt = np.searchsorted(self._key, pix * self._t_span + rel, side="left")
        has_prev = nxt > self.first[pix]
        has_next = nxt < self.stop[pix]
        i_prev = np.maximum(nxt - 1, 0)
        i_next = np.minimum(nxt, self.n_events - 1)
        lvl_prev = np.where(has_prev, self.level[i_prev], 0.0)
        t_prev, t_next = self.t_us[i_prev], self.t_us[i_next]
        p_prev, p_next = self.polarity[i_prev], self.polarity[i_next]
        ramp = has_prev & has_next & (p_prev == p_next)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(ramp, (t - t_prev) / np.maximum(t_next - t_prev, 1e-9), 0.0)
        return lvl_prev + p_prev * np.clip(frac, 0.0, 1.0)

    def counts_at_pixel_times(self, time_map_s: np.ndarray, origin_s: float = 0.0) -> np.ndarray:
        """[H, W] float32 modelled signed count from origin_s (the frame) to each pixel's time."""
        tm = np.asarray(time_map_s, dtype=np.float64)
        if tm.shape != (self.height, self.width):
            raise ValueError(f"time map shape {tm.shape} != frame {(self.height, self.width)}")
        pix = np.arange(tm.size)
        out = self.levels_at(pix, tm.ravel() * 1e6) - self.levels_at(pix, np.full(tm.size, origin_s * 1e6))
        return out.reshape(tm.shape).astype(np.float32)


@dataclass(frozen=True)
class LogResponse:
    """Sensor response log(L + eps): pure log above eps, a dark-current-like floor below."""

    eps: float = DEFAULT_LOG_EPS

    def forward(self, lum: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(lum, 0.0) + np.float32(self.eps)).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return (np.exp(y) - np.float32(self.eps)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class LinLogResponse:
    """v2e's lin-log response: log(DN) above `linear_below_dn` digital numbers, the straight line
    through 0 and that joint below it (DN = L * dn_scale)."""

    dn_scale: float = 255.0
    linear_below_dn: float = 20.0

    def __post_init__(self):
        if not (self.linear_below_dn > 1.0 and self.dn_scale > 0):
            raise ValueError(f"LinLogResponse needs linear_below_dn > 1 and dn_scale > 0, got {self}")

    def forward(self, lum: np.ndarray) -> np.ndarray:
        j = self.linear_below_dn
        dn = np.maximum(lum, 0.0) * np.float32(self.dn_scale)
        return np.where(dn < j, dn * np.float32(np.log(j) / j),
                        np.log(np.maximum(dn, j))).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        j = self.linear_below_dn
        joint = np.float32(np.log(j))
        y = np.asarray(y, dtype=np.float32)
        out = np.exp(y)
        dark = y < joint
        if dark.any():
            out[dark] = y[dark] * np.float32(j / np.log(j))
        out *= np.float32(1.0 / self.dn_scale)
        return out


DEFAULT_RESPONSE = LinLogResponse()
"""The sensors we simulate (v2e) and most DVS pixels: log above a dark linear segment."""

QUANT_VAR = 1.0 / 6.0
COLOUR_FLOOR = 1.0 / 255.0
"""Floor of the luminance ratio that recolours refocused luminance (keeps dark pixels stable)."""


def colour_line_slopes(frame: np.ndarray, radius: int = 4, reg: float = 1e-4) -> np.ndarray:
    """Per-pixel d(channel)/d(luminance), H x W x 3, from the frame's local colour lines.

    A defocused frame mixes neighbouring surfaces: inside a window across an edge the pixels lie
    on the line between the two surfaces' colours, so each channel is an affine function of
    luminance there. Regressing each channel on luminance in (2 radius + 1)^2 windows (guided-
    filter style, coefficients averaged over the windows covering a pixel) gives that slope; the
    prior `reg` pulls it towards the pixel's own chroma ratio where luminance is flat. Moving a
    pixel's luminance along this line recovers the pure colours of sharp edges, which a plain
    luminance gain cannot (the gain keeps the frame's mixed chroma).
    The slopes are luminance-consistent: their Rec. 709 weighted sum is 1.
    """
    frame = np.asarray(frame, dtype=np.float32)
    lum = frame @ LUMA_WEIGHTS
    size = 2 * int(radius) + 1

    def box(x):
        return ndimage.uniform_filter(x, size, mode="reflect")

    mean_l = box(lum)
    var_l = box(lum * lum) - mean_l * mean_l
    ratio = (frame + np.float32(COLOUR_FLOOR)) / (lum + np.float32(COLOUR_FLOOR))[..., None]
    slopes = np.empty_like(frame)
    for ch in range(3):
        x = frame[..., ch]
        cov = box(lum * x) - mean_l * box(x)
        slopes[..., ch] = box((cov + np.float32(reg) * ratio[..., ch]) / (var_l + np.float32(reg)))
    # Keep the result luminance-exact despite the averaging.
    slopes /= (slopes @ LUMA_WEIGHTS)[..., None]
    return slopes


@dataclass
class Refocuser:
    """A frame, its event stack, a contrast threshold and the sensor response: the refocused
    luminance at any time is response^-1(response(L0) + c * S(t)), and colour follows by scaling
    R, G, B with the luminance ratio (the sensor sees luminance only)."""

    frame: np.ndarray
    stack: EventStack
    threshold: float
    response: LogResponse | LinLogResponse = DEFAULT_RESPONSE
    colour_mode: str = "line"
    """How refocused luminance becomes colour: "line" (local colour lines, see
    colour_line_slopes) or "gain" (the frame's chroma scaled by the luminance ratio)."""
    noise_rate_hz: float = 0.0
    """Noise events per pixel and second left in the stack (see estimate_noise_rate); the focus
    measure and the refocus-map merge discount the error they add, which grows with the
    distance from the frame."""
    timeline: EventTimeline | None = None
    """When given, per-pixel refocus times (refocus-map merge) read the level between events from
    their timing (EventTimeline) instead of the binned step function."""

    def __post_init__(self):
        if self.colour_mode not in ("line", "gain"):
            raise ValueError(f"colour_mode must be 'line' or 'gain', got {self.colour_mode!r}")
        self.frame = np.asarray(self.frame, dtype=np.float32)
        self.lum = luminance(self.frame)
        self.log0 = self.response.forward(self.lum)
        self._slopes = None

    def _lum(self, counts: np.ndarray) -> np.ndarray:
        y = self.log0 + np.float32(self.threshold) * counts
        return np.clip(self.response.inverse(y), 0.0, 1.0)

    def luminance_from_counts(self, counts: np.ndarray) -> np.ndarray:
        """Refocused luminance for signed event counts from the frame time ([..., H, W])."""
        return self._lum(counts)

    def noise_variance(self, counts: np.ndarray, lums: np.ndarray, times_s=None) -> np.ndarray:
        """Per-pixel variance of the refocused luminance ([K, H, W]) that the events add.

        Quantisation: a pixel whose level moved by events is off by the sub-threshold residuals
        at both ends, each about uniform over one threshold: variance c^2 / 6 in log units,
        (c L)^2 / 6 in linear units; pixels without net events are exactly the frame. Noise
        events (with `times_s` and a `noise_rate_hz`): each one between the frame and the time
        is a whole threshold of error, c^2 x rate x |t| in log units."""
        c = np.float32(self.threshold)
        # in place: at 1280x720 each [K, H, W] temporary is hundreds of MB
        level = np.multiply(lums, c, dtype=np.float32)
        np.square(level, out=level)
        var = np.divide(level, np.float32(6.0))
        np.multiply(var, counts != 0, out=var)
        if times_s is not None and self.noise_rate_hz > 0:
            dt = np.abs(np.asarray(times_s, dtype=np.float32)).reshape(-1, 1, 1)
            np.multiply(level, np.float32(self.noise_rate_hz) * dt, out=level)
            var += level
        return var

    def luminances(self, times_s) -> np.ndarray:
        """[K, H, W] refocused linear luminance at the given times (s)."""
        return self._lum(self.stack.counts_at(times_s))

    def luminances_at_edges(self, edge_index) -> np.ndarray:
        return self._lum(self.stack.counts_at_edges(edge_index))

    def counts_at_pixel_times(self, time_map_s: np.ndarray, timing: bool = True) -> np.ndarray:
        """[H, W] signed count from the frame to every pixel's own time; with `timing` and a
        timeline, the level between events comes from their timing (see EventTimeline)."""
        if timing and self.timeline is not None:
            return self.timeline.counts_at_pixel_times(time_map_s)
        return self.stack.counts_at_pixel_times(time_map_s)

    def luminance_at_pixel_times(self, time_map_s: np.ndarray, timing: bool = True) -> np.ndarray:
        """[H, W] luminance with every pixel refocused to its own time (see counts_at_pixel_times)."""
        return self._lum(self.counts_at_pixel_times(time_map_s, timing))

    def count_noise_variance(self, counts: np.ndarray, time_map_s: np.ndarray) -> np.ndarray:
        """noise_variance in units of thresholds^2 (log domain / c^2) for per-pixel times."""
        var = np.where(counts != 0, np.float32(QUANT_VAR), np.float32(0.0))
        if self.noise_rate_hz > 0:
            var = var + np.float32(self.noise_rate_hz) * np.abs(np.asarray(time_map_s, np.float32))
        return var

    def colour(self, lum: np.ndarray) -> np.ndarray:
        """An image in the frame's layout whose luminance is `lum` ([H, W] or [K, H, W])."""
        lum = np.asarray(lum, dtype=np.float32)
        if self.frame.ndim == 2:
            return np.clip(lum, 0.0, 1.0)
        if self.colour_mode == "gain":
            gain = (lum + np.float32(COLOUR_FLOOR)) / (self.lum + np.float32(COLOUR_FLOOR))
            return apply_gain(self.frame, gain, COLOUR_FLOOR)
        if self._slopes is None:
            self._slopes = colour_line_slopes(self.frame)
        out = self.frame + self._slopes * (lum - self.lum)[..., None]
        return np.clip(out, 0.0, 1.0)

    def image(self, time_s: float) -> np.ndarray:
        """The frame refocused to one time, same layout as the frame."""
        return self.colour(self.luminances([time_s])[0])

    def image_at_pixel_times(self, time_map_s: np.ndarray) -> np.ndarray:
        """Every pixel refocused to its own time (a refocus map), same layout as the frame."""
        return self.colour(self.luminance_at_pixel_times(time_map_s))


def _smoothed_gradients(x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    if sigma > 0:
        x = ndimage.gaussian_filter(x, sigma, mode="reflect")
    return np.diff(x, axis=0)[:, :-1], np.diff(x, axis=1)[:-1, :]


def estimate_threshold(stack: EventStack, log_frame: np.ndarray, vergence_at, refocus_map_s: np.ndarray,
                       weight: np.ndarray | None = None, smooth: float = 0.0, min_ratio: float = 4.0,
                       erode: int = 4, c_range: tuple[float, float] = (0.05, 0.4),
                       fallback: float = DEFAULT_THRESHOLD, min_pixels: int | None = None,
                       relaxed_ratio: float = 2.0, busy_events_per_pixel: float = 1.0
                       ) -> tuple[float, bool]:
    """Contrast threshold c from one frame and its sweep: the c that makes defocus look like
    defocus.

    Where the sweep ends far more out of focus than the frame is (vergence error at the end >=
    `min_ratio` x that at the frame, judged from a first refocus map), the refocused log image
    y0 + c S_end must have lost the frame's detail: its gradients are those of a much blurrier
    image, close to zero. With c too small the frame's edges remain, with c too large they come
    back inverted, so c = argmin |grad(y0 + c S_end)|^2 = -<grad y0, grad S> / |grad S|^2 over
    those pixels (eroded, so light from nearer surfaces does not leak in). When fewer than
    `min_pixels` qualify (default 0.3 % of the image, at least 40), the ratio is relaxed to
    `relaxed_ratio`.

    Two biases pull on this fit, and the defaults balance them. The end image is blurrier, not
    flat: it keeps a fraction b of the frame's gradients (about frame blur / end blur at an
    edge), which inflates c by 1 / (1 - b); b is smallest at the finest scale and where the end
    is much blurrier than the frame (hence no smoothing and `min_ratio` 4). At that scale the
    events' quantisation noise in grad S shrinks c instead, like a Wiener gain: the fit is the
    scale that best predicts the change from these noisy counts, and refocusing with it beats
    the nominal threshold (on simulated v2e sweeps it lands at 0.17-0.19 for a nominal 0.2 on a
    clean sensor and at 0.09-0.15 on a noisy one, where the smaller gain keeps noise out).

    Returns (c, True); c is clipped up to c_range[0] when the events barely predict the change
    (refocus gently) in a sparse job. In a busy one (at least `busy_events_per_pixel` events per
    pixel) a fit below c_range[0] contradicts the events themselves (each is a whole threshold
    of change): there the ends were not blurred flat (large blur, continuous depth) and the fit
    has failed, so (fallback, False) is returned. Also (fallback, False) when too few pixels
    qualify or the fit is above c_range (DVS thresholds are set well inside it in practice; a
    fit beyond it means the events lag or lose most of the change, and refocusing with it would
    mostly amplify noise).
    """
    if min_pixels is None:
        min_pixels = max(40, int(0.003 * stack.height * stack.width))
    t0, t1 = stack.span_s
    ends = np.array([t0, t1])
    v_ends = np.asarray(vergence_at(ends), dtype=np.float64)
    v0 = float(vergence_at(0.0))
    v_star = np.asarray(vergence_at(refocus_map_s), dtype=np.float64)
    frame_err = np.maximum(np.abs(v0 - v_star), 0.05)
    counts = stack.counts_at(ends)
    gy0, gx0 = _smoothed_gradients(np.asarray(log_frame, np.float64), smooth)
    grads_end = [_smoothed_gradients(counts[k].astype(np.float64), smooth) for k in range(2)]
    for ratio in dict.fromkeys((min_ratio, min(relaxed_ratio, min_ratio))):
        num = den = 0.0
        n_used = 0
        for k, (gys, gxs) in enumerate(grads_end):
            mask = np.abs(v_ends[k] - v_star) >= ratio * frame_err
            if weight is not None:
                mask &= weight > 0
            if erode > 0:
                mask = ndimage.binary_erosion(mask, iterations=erode)
            mask = mask[:-1, :-1]
            if not mask.any():
                continue
            num += float(((gy0 * gys + gx0 * gxs) * mask).sum())
            den += float(((gys * gys + gxs * gxs) * mask).sum())
            n_used += int(((gys != 0) & mask).sum())
        if n_used >= min_pixels and den > 0:
            break
    if n_used < min_pixels or den <= 0:
        return fallback, False
    c = -num / den
    if not c <= c_range[1]:
        return fallback, False
    if c < c_range[0] and stack.n_events >= busy_events_per_pixel * stack.height * stack.width:
        return fallback, False
    return float(max(c, c_range[0])), True


def estimate_noise_rate(n_removed: int, n_pixels: int, duration_s: float, window_us: float) -> float:
    """Noise events per pixel and second that survive isolated_event_mask with this window.

    Noise events (shot, leak) are independent in space and time, so one survives the filter
    only when another happens to land in its 3 x 3 neighbourhood within the window: with a raw
    rate r, a share 1 - exp(-k r) with k = 27 W (9 pixels, about 3 W of time for the filter's
    binning), and r exp(-k r) per pixel and second are removed. Taking the n_removed events
    as all noise, r solves r exp(-k r) = removed rate on [0, 1/k] (bisection; beyond 1/k noise
    is too dense for the filter to thin, and r = 1/k is returned). On a clean sensor the
    removed events are sparse real ones at a low rate, and so is the surviving rate found."""
    if n_pixels <= 0 or duration_s <= 0 or window_us <= 0 or n_removed <= 0:
        return 0.0
    removed = n_removed / (n_pixels * duration_s)
    k = 27.0 * window_us * 1e-6
    lo, hi = removed, 1.0 / k
    if hi * np.exp(-k * hi) <= removed:
        return float(hi - removed) if hi > removed else float(removed)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mid * np.exp(-k * mid) < removed:
            lo = mid
        else:
            hi = mid
    return float(0.5 * (lo + hi) - removed)


def isolated_event_mask(events: np.ndarray, height: int, width: int, window_us: float = 3000.0
                        ) -> np.ndarray:
    """True for events with no other event in their 3 x 3 pixel neighbourhood (the pixel itself
    included) within about +-window_us: the background-activity filter of event cameras.

    Edges moving through defocus fire in spatially and temporally coherent bursts; shot noise
    and leak events are isolated. Time is binned at window_us, neighbours in the same or an
    adjacent bin count (so the window is 1 to 2 x window_us wide)."""
    _check_events(events, height, width)
    if len(events) == 0:
        return np.zeros(0, dtype=bool)
    t = events["t"]
    b = (t - t.min()) // max(int(window_us), 1)
    n_b = int(b.max()) + 1
    hw = height * width
    key = b * hw + _pixel_index(events, width)
    counts = np.bincount(key, minlength=n_b * hw).reshape(n_b, height, width).astype(np.float32)
    block = ndimage.uniform_filter(counts, size=3, mode="constant") * np.float32(27.0)
    return block.ravel()[key] < 1.5  # only the event itself


_PIPELINE_KERNELS: list = []


def pipeline_kernels():
    """The compiled kernels (efs_ros.core._pipeline_kernels), or None without numba."""
    if not _PIPELINE_KERNELS:
        try:
            from efs_ros.core import _pipeline_kernels as kernels
        except ImportError:
            kernels = None
        _PIPELINE_KERNELS.append(kernels)
    return _PIPELINE_KERNELS[0]


def _pixel_index(events: np.ndarray, width: int) -> np.ndarray:
    return events["y"].astype(np.int64) * width + events["x"].astype(np.int64)


def event_bins_between(events: np.ndarray, t0_us: float, t1_us: float, n: int = 64,
                       height: int | None = None, width: int | None = None) -> np.ndarray:
    """The refocus net's event input: [n, H, W] float32, the events between t0 and t1 (us) in n
    bins of equal event COUNT, each the per-pixel sum of polarities.

    Bins run from t0 towards t1. When t1 < t0 (refocusing backwards) the events are taken in
    reverse time order with their polarities negated, so that in both directions the sum over
    bins is the log change from t0 to t1 in units of the threshold.
    """
    if height is None or width is None:
        raise ValueError("event_bins_between needs height and width")
    _check_events(events, height, width)
    lo, hi = (t0_us, t1_us) if t1_us >= t0_us else (t1_us, t0_us)
    t = events["t"]
    sel = events[(t >= lo) & (t < hi)]
    sel = sel[np.argsort(sel["t"], kind="stable")]
    sign = 1.0
    if t1_us < t0_us:
        sel, sign = sel[::-1], -1.0
    hw = height * width
    m = len(sel)
    kernels = pipeline_kernels()
    if kernels is not None:  # float32 sums of +-1 are exact: the same numbers, a third the memory
        out = np.zeros(n * hw, dtype=np.float32)
        if m:
            kernels.scatter_event_bins(_pixel_index(sel, width), sel["p"].astype(np.float32),
                                       n, hw, np.float32(sign), out)
        return out.reshape(n, height, width)
    out = np.zeros(n * hw, dtype=np.float64)
    if m:
        chunk = (np.arange(m, dtype=np.int64) * n) // m  # equal-count bins
        out = np.bincount(chunk * hw + _pixel_index(sel, width),
                          weights=sign * sel["p"].astype(np.float64), minlength=n * hw)
    return out.reshape(n, height, width).astype(np.float32)


def merge_event_stacks(events: np.ndarray, times_us, height: int, width: int,
                       span_us: tuple[float, float] | None = None, n_div: int = 64) -> np.ndarray:
    """The merge net's event input: [N, H, W] float32; slice i sums polarities over
    [t_i - d, t_i + d] with d = (t_max - t_min) / n_div (span_us, default the events' span)."""
    _check_events(events, height, width)
    times = np.atleast_1d(np.asarray(times_us, dtype=np.float64))
    hw = height * width
    if len(events) == 0:
        return np.zeros((times.size, height, width), np.float32)
    order = np.argsort(events["t"], kind="stable")
    ev = events[order]
    t = ev["t"]
    if span_us is None:
        span_us = (float(t[0]), float(t[-1]))
    d = (span_us[1] - span_us[0]) / n_div
    starts = np.searchsorted(t, times - d, side="left")
    stops = np.searchsorted(t, times + d, side="right")
    lengths = stops - starts
    total = int(lengths.sum())
    # Concatenated index ranges [start_i, stop_i) without a Python loop.
    slice_id = np.repeat(np.arange(times.size), lengths)
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    idx = np.repeat(starts, lengths) + offsets
    out = np.bincount(slice_id * hw + _pixel_index(ev[idx], width),
                      weights=ev["p"][idx].astype(np.float64), minlength=times.size * hw)
    return out.reshape(times.size, height, width).astype(np.float32)


def log_frame_chw(frame: np.ndarray, response=DEFAULT_RESPONSE) -> np.ndarray:
    """The refocus net's image input: each channel through the sensor response, [C, H, W]
    float32 (C = 1 or 3); the net's output goes back through response.inverse."""
    frame = np.asarray(frame, dtype=np.float32)
    chw = frame[None] if frame.ndim == 2 else np.transpose(frame, (2, 0, 1))
    return response.forward(chw)
