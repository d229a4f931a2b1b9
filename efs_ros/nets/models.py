"""EvRefocusNet, EvMergeNet and EvRestoreNet: small U-Nets sized for CPU training and embedded-GPU inference.

The authors' nets (about 5 M parameters each, dense blocks, 128..512 channels) take seconds per
pass on a CPU. These keep their topology (two encoders fused at every scale, decoder with skip
concatenation, residual in the log domain; softmax merge weights) at 16/32/64 channels so that
both train here in minutes and one 1280x720 pass is a few GFLOPs. No normalisation layers: the
nets run one job at a time, and plain convolutions export cleanly to ONNX and TensorRT.

Inputs must have H and W divisible by `SIZE_MULTIPLE`; `pad_to_multiple` / `crop_to` in
`efs_ros.infer.base` handle other sizes outside the graph, so the exported graph stays simple.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_BINS = 64
"""Event bins per refocus input (equal event COUNT between frame time and target time)."""

SIZE_MULTIPLE = 4
"""Two stride-2 stages: H and W must be multiples of 4."""

NOMINAL_THRESHOLD = 0.2
"""Contrast threshold the integration skip starts from (v2e default); learned during training."""

LOG_CENTER = 4.0
"""Typical value of the log frame (lin-log response of a mid-grey pixel, log(0.25 x 255)); the
net subtracts it so the first convolutions see centred values. Stored in the model config."""


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions; the first may downsample by 2 (stride) instead of pooling."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            _act(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            _act(),
        )


class Encoder(nn.Module):
    """Three scales (1, 1/2, 1/4); returns the feature map of each.

    Full resolution gets a single 3x3 convolution (after a 1x1 squeeze for wide inputs such
    as the 64 event bins): that stage dominates the FLOPs of a megapixel pass.
    """

    def __init__(self, c_in: int, widths: tuple[int, int, int]):
        super().__init__()
        c0, c1, c2 = widths
        squeeze = [nn.Conv2d(c_in, c0, 1), _act()] if c_in > c0 else []
        self.s0 = nn.Sequential(*squeeze, nn.Conv2d(c0 if squeeze else c_in, c0, 3, padding=1), _act())
        self.s1 = ConvBlock(c0, c1, stride=2)
        self.s2 = ConvBlock(c1, c2, stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.s0(x)
        f1 = self.s1(f0)
        f2 = self.s2(f1)
        return [f0, f1, f2]


class UpBlock(nn.Module):
    """Conv at the coarse scale, nearest upsampling, concatenation with the skip, then conv(s).

    Convolving before upsampling costs a quarter of the usual order; the last (full
    resolution) block uses one merge convolution for the same reason.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int, n_convs: int = 2):
        super().__init__()
        self.up = nn.Conv2d(c_in, c_out, 3, padding=1)
        layers = [nn.Conv2d(c_out + c_skip, c_out, 3, padding=1), _act()]
        if n_convs > 1:
            layers += [nn.Conv2d(c_out, c_out, 3, padding=1), _act()]
        self.merge = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.up(x), 0.1)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.merge(torch.cat([x, skip], dim=1))


def _widths(base: int) -> tuple[int, int, int]:
    return (base, 2 * base, 4 * base)


class EvRefocusNet(nn.Module):
    """Frame (log intensity) + events up to the target time -> log image at the target time.

    Output = log_frame + a * (sum of event bins) + residual: the learned scalar `a` is the
    plain integration with one global threshold, and the U-Net residual corrects what that
    cannot (per-pixel thresholds, leak and shot noise, photoreceptor lag, colour). The residual
    head starts at zero, so an untrained net already equals plain integration.
    """

    def __init__(self, base: int = 16, n_bins: int = N_BINS, channels: int = 3,
                 log_center: float = LOG_CENTER):
        super().__init__()
        self.config = {"base": base, "n_bins": n_bins, "channels": channels, "log_center": float(log_center)}
        self.log_center = float(log_center)
        widths = _widths(base)
        c0, c1, c2 = widths
        self.n_bins = n_bins
        self.channels = channels
        self.img_enc = Encoder(channels, widths)
        # Event encoder input: the bins, their running sum (integration so far) is left to
        # the convolutions, plus the total and its magnitude as explicit cues.
        self.ev_enc = Encoder(n_bins + 2, widths)
        self.fuse = nn.ModuleList([nn.Conv2d(2 * c, c, 1) for c in widths])
        self.bottleneck = ConvBlock(c2, c2)
        self.up1 = UpBlock(c2, c1, c1)
        self.up0 = UpBlock(c1, c0, c0, n_convs=1)
        self.head = nn.Conv2d(c0, channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.threshold = nn.Parameter(torch.tensor(NOMINAL_THRESHOLD))

    def forward(self, log_frame: torch.Tensor, event_bins: torch.Tensor) -> torch.Tensor:
        """log_frame [B,C,H,W], event_bins [B,n_bins,H,W] -> log image [B,C,H,W]."""
        total = event_bins.sum(dim=1, keepdim=True)
        ev_in = torch.cat([event_bins, total, total.abs()], dim=1) * 0.25
        fi = self.img_enc(log_frame - self.log_center)
        fe = self.ev_enc(ev_in)
        fused = [F.leaky_relu(f(torch.cat([a, b], dim=1)), 0.1)
                 for f, a, b in zip(self.fuse, fi, fe, strict=True)]
        x = self.bottleneck(fused[2])
        x = self.up1(x, fused[1])
        x = self.up0(x, fused[0])
        return log_frame + self.threshold * total + self.head(x)


class EvMergeNet(nn.Module):
    """Refocused stack + per-slice event stacks -> per-pixel softmax weights over the slices.

    Every slice goes through the same encoder/decoder (so any number N of slices works, and
    slice order does not matter); at the two coarse scales each slice's features are joined
    with the mean and max over all slices, which is how a slice learns whether it is the
    sharpest one at a pixel. The same weights apply to R, G and B.
    """

    def __init__(self, base: int = 16, channels: int = 3):
        super().__init__()
        self.config = {"base": base, "channels": channels}
        widths = _widths(base)
        c0, c1, c2 = widths
        self.channels = channels
        # Per slice: image in [-1, 1], its difference to the stack mean, event count, |count|.
        self.enc = Encoder(2 * channels + 2, widths)
        self.ctx1 = nn.Conv2d(3 * c1, c1, 1)
        self.ctx2 = nn.Conv2d(3 * c2, c2, 1)
        self.bottleneck = ConvBlock(c2, c2)
        self.up1 = UpBlock(c2, c1, c1)
        self.up0 = UpBlock(c1, c0, c0, n_convs=1)
        self.head = nn.Conv2d(c0, 1, 3, padding=1)

    @staticmethod
    def _context(conv: nn.Module, f: torch.Tensor, b: int, n: int) -> torch.Tensor:
        """Join each slice's features with the mean and max over the slices of its job."""
        g = f.reshape(b, n, f.shape[1], f.shape[2], f.shape[3])
        mean = g.mean(dim=1, keepdim=True).expand_as(g)
        mx = g.amax(dim=1, keepdim=True).expand_as(g)
        joined = torch.cat([g, mean, mx], dim=2).flatten(0, 1)
        return F.leaky_relu(conv(joined), 0.1)

    def logits(self, stack: torch.Tensor, event_stacks: torch.Tensor) -> torch.Tensor:
        """stack [B,N,C,H,W] linear, event_stacks [B,N,H,W] -> logits [B,N,H,W]."""
        b, n = stack.shape[0], stack.shape[1]
        img = stack * 2.0 - 1.0
        rel = img - img.mean(dim=1, keepdim=True)
        ev = event_stacks.unsqueeze(2) * 0.25
        x = torch.cat([img, rel, ev, ev.abs()], dim=2).flatten(0, 1)
        f0, f1, f2 = self.enc(x)
        f1 = self._context(self.ctx1, f1, b, n)
        f2 = self._context(self.ctx2, f2, b, n)
        x = self.bottleneck(f2)
        x = self.up1(x, f1)
        x = self.up0(x, f0)
        out = self.head(x)
        return out.reshape(b, n, out.shape[2], out.shape[3])

    def forward(self, stack: torch.Tensor, event_stacks: torch.Tensor) -> torch.Tensor:
        """Softmax weights [B,N,H,W] summing to 1 over N at every pixel."""
        return torch.softmax(self.logits(stack, event_stacks), dim=1)

    @staticmethod
    def fuse(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted sum over the slices: [B,N,C,H,W] x [B,N,H,W] -> [B,C,H,W]."""
        return (stack * weights.unsqueeze(2)).sum(dim=1)


INITIAL_LOG_DEPTH_ERROR = -1.6
"""log(0.2): the restore net's depth-error channel before training (about the classical AbsRel)."""


class EvRestoreNet(nn.Module):
    """Classical all-in-focus estimate + its evidence -> corrected image, in one pass.

    Input: core.restore.restore_features (frame and classical image in the log response,
    relative vergence, event counts around each pixel's own time, confidence). Output =
    response(classical) + residual, with the residual head at zero to start, so an untrained
    net returns the classical image; training learns what integration misses (detail under one
    threshold, still blurred as in the frame, by a disc that grows with the vergence).
    """

    def __init__(self, base: int = 16, in_channels: int = 12, log_center: float = LOG_CENTER,
                 out_channels: int = 3):
        super().__init__()
        if out_channels not in (3, 4, 5):
            raise ValueError("out_channels must be 3 (image), 4 (+ vergence) or 5 (+ its log error "
                             f"scale), got {out_channels}")
        self.config = {"base": base, "in_channels": in_channels, "log_center": float(log_center),
                       "out_channels": out_channels}
        self.out_channels = out_channels
        self.log_center = float(log_center)
        self.channels = 3
        self.in_channels = in_channels
        widths = _widths(base)
        c0, c1, c2 = widths
        self.enc = Encoder(in_channels, widths)
        self.bottleneck = nn.Sequential(ConvBlock(c2, c2), ConvBlock(c2, c2))
        self.up1 = UpBlock(c2, c1, c1)
        self.up0 = UpBlock(c1, c0, c0, n_convs=2)
        self.head = nn.Conv2d(c0, out_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B,in_channels,H,W] -> log-response image [B,3,H,W], and with
        out_channels 4 the corrected relative vergence as a 4th channel (the classical one,
        feature plane 6, plus a residual), and with 5 the log of the expected relative depth
        error there (starting at log 0.2)."""
        centred = torch.cat([features[:, :6] - self.log_center, features[:, 6:]], dim=1)
        f0, f1, f2 = self.enc(centred)
        x = self.bottleneck(f2)
        x = self.up1(x, f1)
        x = self.up0(x, f0)
        out = self.head(x)
        corrected = features[:, 3:3 + min(self.out_channels, 4)] + out[:, :4]  # plane 6 follows the image
        if self.out_channels < 5:
            return corrected
        return torch.cat([corrected, out[:, 4:5] + INITIAL_LOG_DEPTH_ERROR], dim=1)


MODEL_CLASSES = {"evrefocusnet": EvRefocusNet, "evmergenet": EvMergeNet, "evrestorenet": EvRestoreNet}


def build_model(name: str, config: dict | None = None) -> nn.Module:
    """Instantiate a net by its manifest name with the stored architecture config."""
    try:
        cls = MODEL_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODEL_CLASSES)}") from None
    return cls(**(config or {}))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_megapixel(model: nn.Module, n_slices: int = 8, size: tuple[int, int] = (256, 256)) -> float:
    """Forward FLOPs (multiply-add = 2) per megapixel of output, counted by torch's counter.

    For EvMergeNet the count is per megapixel per slice (it scales linearly with N).
    """
    from torch.utils.flop_counter import FlopCounterMode

    h, w = size
    c = model.channels
    if isinstance(model, EvRefocusNet):
        args = (torch.zeros(1, c, h, w), torch.zeros(1, model.n_bins, h, w))
        per = 1
    elif isinstance(model, EvRestoreNet):
        args = (torch.zeros(1, model.in_channels, h, w),)
        per = 1
    else:
        args = (torch.zeros(1, n_slices, c, h, w), torch.zeros(1, n_slices, h, w))
        per = n_slices
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args)
    return counter.get_total_flops() / (h * w / 1e6) / per
