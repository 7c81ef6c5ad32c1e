"""Bidirectional Hyena operator of order 2, the token mixer of CellPainTR.

The operator follows Hyena (Poli et al., 2023, "Hyena Hierarchy: Towards Larger Convolutional Language Models")
made non-causal as in the bidirectional Hyena used by CellPainTR: every position sees the whole sequence, because
the order of CellProfiler features carries no meaning. For an input ``x`` of shape ``(batch, length, d_model)``::

    x0, x1, v = short_conv(in_proj(x))                          # centred depthwise kernel of 3
    y = out_proj(x0 * (h * (x1 * v) + D * (x1 * v)))            # h: implicit filter over lags -(L-1)..(L-1)

The long filter ``h`` is implicit: a small MLP with sine activations maps positional features of each lag to
``d_model`` channels, multiplied by an exponential-decay window. The convolution is evaluated with real FFTs.

Defects of the public CellPainTR reference implementation that this module does not reproduce:

1. Its short convolution is causal (``Conv1d(padding=2)`` keeping the first ``L`` outputs), which contradicts the
   bidirectional design; here the kernel of 3 is centred (one neighbour on each side).
2. Its positional features overwrite every sine/cosine frequency with ``1e-4``, so the bands are constant and only
   the raw lag ``t`` carries position; here the bands have distinct frequencies ``1, 2, ..., n_bands`` cycles over
   the sequence length.
3. Its decay window ``exp(-t * |delta|)`` is evaluated on ``t`` in ``[-1, 1]``, so for negative lags it grows up to
   ``exp(15.4) ~ 5e6``; here the window is ``exp(-|t| * |delta|)``, symmetric and decaying in both directions.
4. It declares per-parameter learning rates for the filter (``_optim`` attributes) that no optimiser reads; here the
   filter parameters are ordinary parameters, listed by :meth:`HyenaOperator.filter_parameters` so that a training
   plan can give them their own optimiser group.
5. Its FFT length is ``L + (2L - 1)``, 9,770 = 2 * 5 * 977 at the JUMP length L = 3,257, whose large prime factor
   makes cuFFT fall back to the slow Bluestein algorithm; here the FFT length is the smallest even number
   ``>= 2L - 1`` with prime factors 2, 3, 5, 7 only (6,720 for JUMP), the sizes cuFFT optimises, and ``2L - 1`` is
   the shortest length that gives the exact (non-circular) bidirectional convolution.
6. For a sequence shorter than its maximum length it slices ``[:2L - 1]`` out of the positional features, which keeps
   only negative lags; here the positional features are built for the model's exact length.

The bias ``D`` is folded into the zero-lag tap of the filter, ``(h + D * delta) * u = h * u + D * u``, so it costs
no extra pass over the activations, and the convolution is a custom autograd function that keeps only its input for
the backward pass (the spectra are recomputed), which saves memory at long sequence lengths.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_CUFFT_FAST_PRIMES = (2, 3, 5, 7)


def fast_fft_size(min_size: int) -> int:
    """Smallest even FFT length ``>= min_size`` whose prime factors are 2, 3, 5 and 7 only.

    cuFFT (and pocketfft on CPU) have dedicated kernels for these radices; a length with a large prime factor falls
    back to Bluestein's algorithm, several times slower. Even lengths keep the real FFT on its fast path.

    Parameters
    ----------
    min_size
        Lower bound on the length, e.g. ``2 * L - 1`` for an exact bidirectional convolution of length ``L``.

    Returns
    -------
    The FFT length.
    """
    if min_size < 1:
        raise ValueError(f"`min_size` must be positive, got {min_size}.")
    size = min_size + (min_size % 2)
    while not _has_only_fast_factors(size):
        size += 2
    return size


def _has_only_fast_factors(n: int) -> bool:
    for prime in _CUFFT_FAST_PRIMES:
        while n % prime == 0:
            n //= prime
    return n == 1


def _spectrum_dtype(dtype: torch.dtype) -> torch.dtype:
    """Real dtype the FFT runs in: float64 stays float64, everything else (float32, bfloat16, float16) is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _padded_channels_first(u: torch.Tensor, fft_size: int) -> torch.Tensor:
    """``(batch, length, channels)`` -> zero-padded ``(batch, channels, fft_size)`` in the FFT dtype, one copy."""
    return F.pad(u.transpose(1, 2).to(_spectrum_dtype(u.dtype)), (0, fft_size - u.shape[1]))


def _channels_last(y: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """First ``length`` samples of ``(batch, channels, fft_size)`` as a contiguous ``(batch, length, channels)``."""
    return y[..., :length].transpose(1, 2).to(dtype).contiguous()


def _circular_filter(taps: torch.Tensor, fft_size: int) -> torch.Tensor:
    """Place taps for lags ``-(L-1)..(L-1)`` (shape ``(2L-1, C)``) circularly: lag ``m`` at index ``m mod fft_size``.

    Returns shape ``(C, fft_size)``. With ``fft_size >= 2L - 1`` the lags land on distinct indices, so the circular
    convolution of a zero-padded input with this filter, read at ``[0, L)``, is the exact linear bidirectional
    convolution (the same numbers as the centred slice ``[L-1, 2L-1)`` of the full linear convolution with the taps
    in lag order).
    """
    length = (taps.shape[0] + 1) // 2
    gap = taps.new_zeros(fft_size - taps.shape[0], taps.shape[1])
    return torch.cat([taps[length - 1 :], gap, taps[: length - 1]]).T


def _taps_from_circular(circular: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`_circular_filter`: ``(C, fft_size)`` -> taps for lags ``-(L-1)..(L-1)``, ``(2L-1, C)``."""
    fft_size = circular.shape[-1]
    return torch.cat([circular[:, fft_size - length + 1 :], circular[:, :length]], dim=1).T


class _BidirectionalFFTConv(torch.autograd.Function):
    """``y[b, i, c] = sum_j taps[i - j + L - 1, c] * u[b, j, c]`` over ``j`` in ``[0, L)``, by real FFTs.

    Forward: ``y = irfft(rfft(u) * rfft(k))[:L]`` with the filter spectrum computed once for the whole batch.
    Backward (derived by hand so that only ``u`` is kept, not its complex spectrum):
    ``grad_u = irfft(rfft(g) * conj(rfft(k)))[:L]`` (a correlation with the filter) and
    ``grad_k = irfft(sum_b rfft(g_b) * conj(rfft(u_b)))`` (a correlation of gradient and input).
    The inverse transform's ``1 / fft_size`` is folded into the small filter spectrum (``norm="forward"``), which
    spares a scaling pass over every batch-sized output.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, taps: torch.Tensor, fft_size: int) -> torch.Tensor:
        length = u.shape[1]
        circular = _circular_filter(taps.to(_spectrum_dtype(u.dtype)), fft_size)
        filter_spectrum = torch.fft.rfft(circular, dim=-1, norm="forward")
        spectrum = torch.fft.rfft(_padded_channels_first(u, fft_size), dim=-1)
        spectrum.mul_(filter_spectrum)
        y = torch.fft.irfft(spectrum, n=fft_size, dim=-1, norm="forward")
        ctx.save_for_backward(u, filter_spectrum)
        ctx.fft_size = fft_size
        ctx.taps_dtype = taps.dtype
        return _channels_last(y, length, u.dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        u, filter_spectrum = ctx.saved_tensors
        fft_size, length = ctx.fft_size, u.shape[1]
        grad_spectrum = torch.fft.rfft(_padded_channels_first(grad_y, fft_size), dim=-1)
        grad_u = grad_taps = None
        if ctx.needs_input_grad[1]:
            cross = torch.fft.rfft(_padded_channels_first(u, fft_size), dim=-1).conj_physical_()
            cross = cross.mul_(grad_spectrum).sum(dim=0)  # the batch-sized spectrum is freed before grad_u's pass
            grad_taps = _taps_from_circular(torch.fft.irfft(cross, n=fft_size, dim=-1), length).to(ctx.taps_dtype)
        if ctx.needs_input_grad[0]:
            grad_spectrum.mul_(filter_spectrum.conj())
            grad_u = torch.fft.irfft(grad_spectrum, n=fft_size, dim=-1, norm="forward")
            grad_u = _channels_last(grad_u, length, u.dtype)
        return grad_u, grad_taps, None


def bidirectional_fft_conv(u: torch.Tensor, taps: torch.Tensor, fft_size: int | None = None) -> torch.Tensor:
    """Non-causal long convolution of every channel with its own filter, by FFT.

    ``y[b, i, c] = sum_j taps[i - j + L - 1, c] * u[b, j, c]``: position ``i`` sees positions on both sides.
    The FFT runs in float32 (float64 for float64 input) whatever the input dtype; the output has the input dtype.

    Parameters
    ----------
    u
        Input of shape ``(batch, length, channels)``.
    taps
        Filter of shape ``(2 * length - 1, channels)``; row ``k`` is lag ``k - (length - 1)``.
    fft_size
        FFT length, at least ``2 * length - 1``; by default :func:`fast_fft_size` of that.

    Returns
    -------
    Tensor of the shape and dtype of ``u``.
    """
    length = u.shape[1]
    if taps.shape != (2 * length - 1, u.shape[2]):
        raise ValueError(f"`taps` must have shape {(2 * length - 1, u.shape[2])} for input {tuple(u.shape)}.")
    fft_size = fast_fft_size(2 * length - 1) if fft_size is None else fft_size
    if fft_size < 2 * length - 1:
        raise ValueError(f"`fft_size` must be at least 2 * length - 1 = {2 * length - 1}, got {fft_size}.")
    return _BidirectionalFFTConv.apply(u, taps, fft_size)


def centred_depthwise_conv(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise convolution with a centred kernel of 3 along the sequence, in ``(batch, length, channels)`` layout.

    ``out[:, l] = weight[:, 0] * u[:, l - 1] + weight[:, 1] * u[:, l] + weight[:, 2] * u[:, l + 1] + bias`` with zero
    padding: the same numbers as ``nn.Conv1d(C, C, 3, padding=1, groups=C)``, written as three shifted
    multiply-adds so that the layout never changes and no padded copy is made (the compiler fuses them into one
    pass). Parameters are cast to the input dtype so that bfloat16 activations stay bfloat16 under autocast.
    """
    weight, bias = weight.to(u.dtype), bias.to(u.dtype)
    out = torch.addcmul(bias, u, weight[:, 1])
    out[:, 1:].addcmul_(u[:, :-1], weight[:, 0])
    out[:, :-1].addcmul_(u[:, 1:], weight[:, 2])
    return out


class Sine(nn.Module):
    """``sin(frequency * x)`` with one trainable frequency per channel, the activation of Hyena's filter MLP."""

    def __init__(self, width: int, frequency: float):
        super().__init__()
        self.frequency = nn.Parameter(torch.full((width,), float(frequency)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.frequency * x)


def lag_positional_features(length: int, n_bands: int) -> torch.Tensor:
    """Positional features of the lags ``-(L-1)..(L-1)``: ``[t, cos(2 pi f m / L), sin(2 pi f m / L)]``.

    ``t = m / (L - 1)`` is the normalised lag in ``[-1, 1]`` and ``f = 1..n_bands`` are distinct frequencies (cycles
    over the sequence length), Hyena's positional encoding with the band frequencies that the CellPainTR reference
    overwrote with ``1e-4``. Returns shape ``(2L - 1, 1 + 2 * n_bands)``, float32.
    """
    lags = torch.arange(-(length - 1), length, dtype=torch.float64)
    t = lags / max(length - 1, 1)
    angles = 2 * math.pi * lags[:, None] * torch.arange(1, n_bands + 1, dtype=torch.float64) / length
    return torch.cat([t[:, None], torch.cos(angles), torch.sin(angles)], dim=1).float()


def decay_window(
    length: int, channels: int, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5, target: float = 1e-2
) -> torch.Tensor:
    """Symmetric exponential decay ``exp(-|t| * |delta_c|)`` over lags, one rate per channel; shape ``(2L-1, C)``.

    Channel rates are spaced linearly so that the window reaches ``target`` at ``|t| = fast_decay_pct`` for the
    fastest channel and at ``|t| = slow_decay_pct`` for the slowest (Hyena's ``ExponentialModulation`` defaults).
    The absolute value of ``t`` is the fix of the reference's window, which grows for negative lags.
    """
    t = torch.arange(-(length - 1), length, dtype=torch.float32)[:, None] / max(length - 1, 1)
    rates = torch.linspace(math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct, channels).abs()
    return torch.exp(-t.abs() * rates)


class HyenaFilter(nn.Module):
    """Implicit long filter of a bidirectional Hyena operator, one channel per model dimension.

    ``h(m) = MLP(positional_features(m)) * (window(m) + shift)`` for lags ``m = -(L-1)..(L-1)``.

    Parameters
    ----------
    channels
        Number of filter channels (``d_model`` for an order-2 operator).
    length
        Sequence length ``L``.
    width
        Width of the filter MLP (64 in CellPainTR).
    n_bands
        Number of sine/cosine frequency bands of the positional features.
    n_hidden
        Number of hidden ``width x width`` layers of the MLP (2 in Hyena and CellPainTR).
    sine_frequency
        Initial frequency of the sine activations (10 in the CellPainTR configuration).
    shift
        Constant added to the decay window so that long lags keep a small weight (0.05 in Hyena).
    """

    def __init__(
        self,
        channels: int,
        length: int,
        width: int = 64,
        n_bands: int = 8,
        n_hidden: int = 2,
        sine_frequency: float = 10.0,
        shift: float = 0.05,
    ):
        super().__init__()
        self.length = length
        self.register_buffer("positions", lag_positional_features(length, n_bands), persistent=False)
        self.register_buffer("window", decay_window(length, channels) + shift, persistent=False)
        layers: list[nn.Module] = [nn.Linear(1 + 2 * n_bands, width), Sine(width, sine_frequency)]
        for _ in range(n_hidden):
            layers += [nn.Linear(width, width), Sine(width, sine_frequency)]
        layers.append(nn.Linear(width, channels, bias=False))
        self.mlp = nn.Sequential(*layers)

    def forward(self) -> torch.Tensor:
        """Filter taps for lags ``-(L-1)..(L-1)``, shape ``(2L - 1, channels)``, always float32 (autocast off)."""
        with torch.autocast(device_type=self.positions.device.type, enabled=False):
            return self.mlp(self.positions) * self.window


class HyenaOperator(nn.Module):
    """Bidirectional Hyena operator of order 2 (Poli et al., 2023), for sequences of a fixed length.

    Parameters
    ----------
    d_model
        Model dimension.
    length
        Sequence length; the filter is defined for exactly this length.
    filter_width
        Width of the implicit filter MLP (64 in CellPainTR).
    n_bands
        Sine/cosine bands of the filter's positional features.

    Notes
    -----
    Matrix products follow autocast (bfloat16 under ``torch.autocast``); the filter and the FFT convolution run in
    float32 regardless. Input and output are ``(batch, length, d_model)``.
    """

    def __init__(self, d_model: int, length: int, filter_width: int = 64, n_bands: int = 8):
        super().__init__()
        self.d_model = d_model
        self.length = length
        self.fft_size = fast_fft_size(2 * length - 1)
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        bound = 1 / math.sqrt(3)  # nn.Conv1d's default initialisation for a kernel of 3
        self.short_conv_weight = nn.Parameter(torch.empty(3 * d_model, 3).uniform_(-bound, bound))
        self.short_conv_bias = nn.Parameter(torch.empty(3 * d_model).uniform_(-bound, bound))
        self.long_filter = HyenaFilter(d_model, length, width=filter_width, n_bands=n_bands)
        self.bias = nn.Parameter(torch.randn(d_model))  # D, Hyena's initialisation
        self.out_proj = nn.Linear(d_model, d_model)
        zero_lag = torch.zeros(2 * length - 1, 1)
        zero_lag[length - 1] = 1.0
        self.register_buffer("zero_lag", zero_lag, persistent=False)

    def filter_taps(self) -> torch.Tensor:
        """Long filter with the bias ``D`` on its zero-lag tap, ``(2L - 1, d_model)``, float32."""
        return self.long_filter() + self.zero_lag * self.bias

    def filter_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the implicit filter and of ``D``, for an optimiser group of their own."""
        yield from self.long_filter.parameters()
        yield self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.length:
            raise ValueError(f"HyenaOperator was built for length {self.length}, got input of length {x.shape[1]}.")
        u = centred_depthwise_conv(self.in_proj(x), self.short_conv_weight, self.short_conv_bias)
        x0, x1, v = u.chunk(3, dim=-1)
        mixed = _BidirectionalFFTConv.apply(x1 * v, self.filter_taps(), self.fft_size)
        return self.out_proj(x0 * mixed)
