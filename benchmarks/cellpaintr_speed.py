"""Training and inference speed of the CellPainTR network against the public reference's implementation choices.

Shape: the JUMP setting of the CellPainTR paper, 3,255 features (sequence length 3,257), d_model 256, 4 blocks.
A training step is forward + masked-feature loss + backward + AdamW; inference is the CLS embedding without
gradients. Two implementations run in the same process:

* ``reference``: a re-implementation of the public CellPainTR code's computational choices (written here, not in
  the package): FFT length ``L + (2L - 1)`` (9,770 at JUMP, prime factor 977, so cuFFT uses Bluestein), filter
  spectrum normalised by a separate division, ``(batch, channels, length)`` layout with transposes around every
  mixer, ``nn.Conv1d`` short filter computed with padding 2 and sliced, bias ``D`` applied as a separate pass,
  masked value embeddings written by boolean indexing, loss by boolean indexing; float32 by default, batch 16
  (its setting). Masks are drawn on the device for both implementations, so the reference's numpy masking on the
  CPU is not part of the timing.
* ``cpembed``: :class:`cpembed.module.CellPainTRModule` with the group-wise masked loss, in float32 and under
  bfloat16 autocast, eager and with ``torch.compile`` on its blocks.

The script needs only torch and numpy: it puts ``src`` on the import path and imports
``cpembed.module``, which (like the package's ``__init__``) imports nothing beyond torch, so it runs on a GPU
machine without anndata or scanpy.

Before timing, the package's FFT convolution is checked on the device against a direct float64 convolution at
the benchmark's length (relative errors of output and gradients, printed with the run's metadata). Every
configuration that runs out of memory or fails to compile is reported as such; ``--time-budget-s`` skips the
configurations that would start after the budget; results are written to ``--json-out`` after every row, and the
final table to ``--out`` as CSV (the table the benchmarks page includes).
``--profile`` adds, for every ``cpembed`` configuration, the device time of two training steps by kernel family
(matrix products, FFTs, compiled elementwise kernels, copies, ...) and the kernels that take the most time.

Examples
--------
H100, full size::

    python benchmarks/cellpaintr_speed.py --device cuda --json-out cellpaintr_speed.json

Quick check on a CPU::

    python benchmarks/cellpaintr_speed.py --device cpu --n-features 200 --d-model 32 --batch-sizes 8 --steps 2 \
        --warmup 1 --compile off --baseline-batch-size 4
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _profile import format_profile, profile_steps
from torch import nn

REPO = Path(__file__).resolve().parents[1]
N_SOURCES = 4
N_GROUPS = 40
MASK_RATIO = 0.25  # middle of CellPainTR's U(0.05, 0.4)


def load_network_package():
    """Import ``cpembed.module`` from this checkout's ``src`` (torch only; the package need not be installed)."""
    sys.path.insert(0, str(REPO / "src"))
    return importlib.import_module("cpembed.module")


# --------------------------------------------------------------------------- reference re-implementation


def reference_fftconv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The reference's convolution: FFT length L + (2L - 1), centred slice, bias as a separate pass."""
    seq_len = u.shape[-1]
    fft_size = seq_len + k.shape[-1]
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., seq_len - 1 : 2 * seq_len - 1]
    return (y + u * bias.unsqueeze(-1)).to(dtype=u.dtype)


class ReferenceSin(nn.Module):
    def __init__(self, width: int, frequency: float):
        super().__init__()
        self.freq = nn.Parameter(frequency * torch.ones(1, width))

    def forward(self, x):
        return torch.sin(self.freq * x)


class ReferenceHyenaFilter(nn.Module):
    """Implicit filter as in the reference: constant bands, one shared sine module, window exp(-t |delta|)."""

    def __init__(self, d_model: int, seq_len: int, emb_dim: int = 5, width: int = 64, frequency: float = 10.0):
        super().__init__()
        bands = (emb_dim - 1) // 2
        t = torch.linspace(-1, 1, 2 * seq_len - 1)[None, :, None]
        lags = torch.linspace(-seq_len + 1, seq_len - 1, 2 * seq_len - 1)[None, :, None]
        z = torch.exp(-1j * torch.full((1, 1, bands), 1e-4) * 2 * math.pi * lags / seq_len)
        self.register_buffer("z", torch.cat([t, z.real, z.imag], dim=-1))
        self.register_buffer("t", t)
        rates = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, d_model)[None, None]
        self.register_buffer("deltas", rates)
        act = ReferenceSin(width, frequency)
        self.mlp = nn.Sequential(
            nn.Linear(emb_dim, width), act, nn.Linear(width, width), act, nn.Linear(width, width), act
        )
        self.mlp.append(nn.Linear(width, d_model, bias=False))
        self.bias = nn.Parameter(torch.randn(d_model))

    def forward(self) -> torch.Tensor:
        h = self.mlp(self.z)
        return h * (torch.exp(-self.t * self.deltas.abs()) + 0.05)


class ReferenceHyenaOperator(nn.Module):
    def __init__(self, d_model: int, seq_len: int):
        super().__init__()
        self.d_model = d_model
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.short_filter = nn.Conv1d(3 * d_model, 3 * d_model, 3, padding=2, groups=3 * d_model)
        self.filter_fn = ReferenceHyenaFilter(d_model, seq_len)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        seq_len = u.shape[-2]
        u = self.in_proj(u).transpose(1, 2)
        uc = self.short_filter(u)[..., :seq_len]
        x0, x1, v = uc.split(self.d_model, dim=1)
        k = self.filter_fn()[0].transpose(0, 1)
        v = reference_fftconv(v * x1, k, self.filter_fn.bias)
        return self.out_proj((v * x0).transpose(1, 2))


class ReferenceBlock(nn.Module):
    """Pre-norm block with the reference's dropout-add-norm order and float32 residual."""

    def __init__(self, d_model: int, seq_len: int, d_mlp: int, dropout: float):
        super().__init__()
        self.mixer = ReferenceHyenaOperator(d_model, seq_len)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(approximate="tanh"), nn.Linear(d_mlp, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden, residual):
        dropped = self.dropout(hidden)
        residual = dropped + residual if residual is not None else dropped
        hidden = self.mixer(self.norm1(residual.to(self.norm1.weight.dtype)))
        residual = hidden + residual
        hidden = self.mlp(self.norm2(residual.to(self.norm2.weight.dtype)))
        return hidden, residual.float()


class ReferenceModel(nn.Module):
    def __init__(self, n_features: int, d_model: int, n_layers: int = 4, d_mlp: int = 1024):
        super().__init__()
        seq_len = n_features + 2
        self.value_embedding = nn.Linear(1, d_model)
        self.feature_ids = nn.Embedding(n_features + 1, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.source_token = nn.Embedding(14, d_model)
        self.blocks = nn.ModuleList(
            ReferenceBlock(d_model, seq_len, d_mlp, dropout=0.1 if i == 0 else 0.0) for i in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.regressor = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.LayerNorm(d_model), nn.Linear(d_model, 1)
        )
        self.register_buffer("ids", torch.arange(n_features + 1))
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def encode(self, x, source, mask=None):
        values = self.value_embedding(x.unsqueeze(2))
        if mask is not None:
            values[mask] = self.mask_token.to(values.dtype)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), values], dim=1) + self.feature_ids(self.ids)
        hidden = torch.cat([tokens, self.source_token(source).unsqueeze(1)], dim=1)
        residual = None
        for block in self.blocks:
            hidden, residual = block(hidden, residual)
        return self.final_norm(hidden + residual)

    def masked_loss(self, x, source, mask):
        target = x.clone()
        target[~mask] = -100
        prediction = self.regressor(self.encode(x, source, mask))[:, 1:-1, 0]
        return ((prediction - target) ** 2)[target != -100].mean()

    def embed(self, x, source):
        return self.encode(x, source)[:, 0]


# --------------------------------------------------------------------------- correctness on the device


def fft_conv_errors(network, device: torch.device, length: int, channels: int = 8) -> dict:
    """Relative errors of the package's FFT convolution (float32) against a direct float64 convolution.

    The direct version builds the Toeplitz matrix ``T[i, j, c] = taps[i - j + L - 1, c]``; the check covers the
    output and the gradients with respect to input and filter at the benchmark's sequence length.
    """
    generator = torch.Generator(device=device).manual_seed(1)
    u = torch.randn(2, length, channels, device=device, generator=generator, dtype=torch.float64)
    taps = torch.randn(2 * length - 1, channels, device=device, generator=generator, dtype=torch.float64)
    weight = torch.randn(2, length, channels, device=device, generator=generator, dtype=torch.float64)
    lag_index = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)[None, :]
    errors = {}
    results = []
    for dtype, convolve in (
        (torch.float32, network.bidirectional_fft_conv),
        (torch.float64, lambda a, k: torch.einsum("ijc,bjc->bic", k[lag_index + length - 1], a)),
    ):
        a, k = u.to(dtype).requires_grad_(), taps.to(dtype).requires_grad_()
        y = convolve(a, k)
        grads = torch.autograd.grad((y * weight.to(dtype)).sum(), (a, k))
        results.append((y, *grads))
    for name, fast, exact in zip(("output", "grad_input", "grad_filter"), *results, strict=True):
        errors[f"fft_conv_{name}_rel_error"] = ((fast.double() - exact).norm() / exact.norm()).item()
    return errors


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def reset_peak_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def synthetic_batch(batch_size: int, n_features: int, device: torch.device, generator: torch.Generator):
    x = torch.randn(batch_size, n_features, device=device, generator=generator)
    x = x * (torch.rand(batch_size, n_features, device=device, generator=generator) > 0.05)  # some true zeros
    source = torch.randint(0, N_SOURCES, (batch_size,), device=device, generator=generator)
    return x, source


def measure(
    model: nn.Module,
    loss_fn: Callable,
    embed_fn: Callable,
    batch_size: int,
    precision: str,
    args: argparse.Namespace,
    profiled: bool = False,
) -> dict:
    """Train and inference throughput and peak memory of one configuration."""
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    x, source = synthetic_batch(batch_size, args.n_features, device, generator)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    result = {}

    def train_step():
        with autocast:
            loss = loss_fn(model, x, source, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    reset_peak_memory(device)
    seconds = seconds_per_call(train_step, args.steps, args.warmup, device)
    result["train_samples_per_s"] = batch_size / seconds
    result["train_peak_gib"] = peak_memory_gib(device)
    if args.profile and profiled:
        synchronize(device)
        result |= profile_steps(train_step, device)
    optimizer.state.clear()  # free the optimiser's moments and the gradients before measuring inference
    model.zero_grad(set_to_none=True)
    model.eval()

    def inference_step():
        with torch.no_grad(), autocast:
            embed_fn(model, x, source)

    reset_peak_memory(device)
    seconds = seconds_per_call(inference_step, args.steps, args.warmup, device)
    result["inference_samples_per_s"] = batch_size / seconds
    result["inference_peak_gib"] = peak_memory_gib(device)
    return result


def reference_loss(model: ReferenceModel, x, source, generator) -> torch.Tensor:
    mask = (torch.rand(x.shape, device=x.device, generator=generator) < MASK_RATIO) & (x != 0)
    return model.masked_loss(x, source, mask)


def make_cpembed_loss(network) -> Callable:
    def cpembed_loss(model, x, source, generator) -> torch.Tensor:
        mask = network.sample_feature_mask(x, MASK_RATIO, model.feature_groups, generator)
        reconstruction = model(x, source, mask)["reconstruction"]
        return network.masked_feature_loss(reconstruction, x, mask, model.feature_groups, N_GROUPS)

    return cpembed_loss


def embed(model, x, source) -> torch.Tensor:
    return model.embed(x, source)


def run_config(config: dict, args: argparse.Namespace, network) -> dict:
    """Measure one configuration, recording out-of-memory or a compile failure instead of stopping."""
    device = torch.device(args.device)
    d_mlp = 4 * args.d_model
    try:
        if config["implementation"] == "reference":
            model = ReferenceModel(args.n_features, args.d_model, args.n_layers, d_mlp)
            loss_fn = reference_loss
        else:
            groups = torch.arange(args.n_features) % N_GROUPS
            model = network.CellPainTRModule(
                args.n_features,
                N_SOURCES,
                groups,
                d_model=args.d_model,
                n_layers=args.n_layers,
                d_mlp=d_mlp,
                gradient_checkpointing=config["checkpointing"],
            )
            if config["compiled"]:
                model.compile_blocks(activation_memory_budget=config["memory_budget"], dynamic=False)
            loss_fn = make_cpembed_loss(network)
        profiled = config["implementation"] == "cpembed"
        row = measure(model, loss_fn, embed, config["batch_size"], config["precision"], args, profiled)
        config.update(row, status="ok")
    except torch.OutOfMemoryError:
        config["status"] = "out of memory"
    except Exception as error:  # e.g. a compiler failure: report it and go on with the other configurations
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        config["status"] = f"failed: {type(error).__name__}: {message}"
    model = None
    torch._dynamo.reset()
    reset_peak_memory(device)
    return config


def plan_configs(args: argparse.Namespace) -> list[dict]:
    configs = [
        {
            "implementation": "reference",
            "precision": args.baseline_precision,
            "batch_size": args.baseline_batch_size,
            "compiled": False,
            "memory_budget": None,
            "checkpointing": False,
        }
    ]
    modes = {"off": [False], "on": [True], "both": [False, True]}
    for precision in args.precisions:
        for compiled in modes[args.compile]:
            for budget in args.memory_budgets if compiled else [None]:
                for checkpointing in modes[args.checkpointing]:
                    for batch_size in args.batch_sizes:
                        config = {"precision": precision, "batch_size": batch_size, "compiled": compiled}
                        config |= {"memory_budget": budget, "checkpointing": checkpointing}
                        configs.append({"implementation": "cpembed"} | config)
    return configs


def add_ratios(row: dict, baseline: dict) -> None:
    for key in ("train", "inference"):
        ours, theirs = row.get(f"{key}_samples_per_s"), baseline.get(f"{key}_samples_per_s")
        row[f"{key}_ratio"] = ours / theirs if ours and theirs else None


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--n-features", type=int, default=3255)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument(
        "--checkpointing", choices=["off", "on", "both"], default="off", help="gradient checkpointing of the blocks"
    )
    parser.add_argument(
        "--memory-budgets",
        type=float,
        nargs="+",
        default=[1.0, 0.7],
        help="activation memory budgets of the compiled blocks (CellPainTRModule.compile_blocks); 1 keeps all",
    )
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    parser.add_argument("--baseline-batch-size", type=int, default=16)
    parser.add_argument("--baseline-precision", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--time-budget-s", type=float, default=None, help="skip configurations started after this")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="CSV file to write the final table to")
    parser.add_argument("--profile", action="store_true", help="device time by kernel family (cpembed rows)")
    return parser.parse_args(argv)


def _number(key: str, fmt: str):
    """Cell of a numeric column: the formatted value, or "-" where the row has none."""
    return lambda row: format(row[key], fmt) if row.get(key) is not None else "-"


#: Table columns: header, alignment and width, and the cell of a row.
COLUMNS = [
    ("implementation", "<15", lambda row: row["implementation"]),
    ("precision", "<10", lambda row: row["precision"]),
    ("batch", ">6", lambda row: str(row["batch_size"])),
    ("compiled", ">9", lambda row: str(row["compiled"])),
    ("budget", ">7", _number("memory_budget", ".2f")),
    ("ckpt", ">6", lambda row: str(row["checkpointing"])),
    ("train samples/s", ">17", _number("train_samples_per_s", ",.0f")),
    ("infer samples/s", ">17", _number("inference_samples_per_s", ",.0f")),
    ("train GiB", ">11", _number("train_peak_gib", ".1f")),
    ("infer GiB", ">11", _number("inference_peak_gib", ".1f")),
    ("train x", ">9", _number("train_ratio", ".2f")),
    ("infer x", ">9", _number("inference_ratio", ".2f")),
]


def format_table(rows: list[dict]) -> str:
    header = "".join(format(name, spec) for name, spec, _ in COLUMNS) + "  status"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append("".join(format(cell(row), spec) for _, spec, cell in COLUMNS) + f"  {row['status']}")
    return "\n".join(lines)


#: Columns of the ``--out`` CSV file: header and the key of a result row.
CSV_COLUMNS = {
    "implementation": "implementation",
    "precision": "precision",
    "batch": "batch_size",
    "compiled": "compiled",
    "memory budget": "memory_budget",
    "train samples/s": "train_samples_per_s",
    "inference samples/s": "inference_samples_per_s",
    "train GiB": "train_peak_gib",
    "inference GiB": "inference_peak_gib",
    "train ratio": "train_ratio",
    "inference ratio": "inference_ratio",
    "status": "status",
}


def write_csv(rows: list[dict], device: str, path: Path) -> None:
    """Write the result rows with the device as CSV, in the columns of :data:`CSV_COLUMNS` (empty where none)."""
    import csv

    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["device", *CSV_COLUMNS])
        for row in rows:
            values = [row.get(key) for key in CSV_COLUMNS.values()]
            writer.writerow([device, *("" if value is None else _rounded(value) for value in values)])


def _rounded(value):
    return round(value, 2) if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA was requested but is not available; pass --device cpu.")
    torch.manual_seed(0)
    network = load_network_package()
    seq_len = args.n_features + 2
    meta = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "n_features": args.n_features,
        "sequence_length": seq_len,
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "fft_size_cpembed": network.fast_fft_size(2 * seq_len - 1),
        "fft_size_reference": 3 * seq_len - 1,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    try:
        meta |= fft_conv_errors(network, device, seq_len)
    except Exception as error:  # report, do not stop the timings
        meta["fft_conv_check"] = f"failed: {type(error).__name__}: {error}"
    print(" ".join(f"{key}={value}" for key, value in meta.items()), flush=True)
    started = time.perf_counter()
    rows: list[dict] = []
    for config in plan_configs(args):
        if args.time_budget_s is not None and time.perf_counter() - started > args.time_budget_s:
            rows.append(config | {"status": "skipped (time budget)"})
            continue
        print(f"running {config}", flush=True)
        row = run_config(config, args, network)
        add_ratios(row, rows[0] if rows else row)
        print(f"  -> {row}", flush=True)
        rows.append(row)
        if args.json_out is not None:
            args.json_out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(format_table(rows), flush=True)
    if args.out is not None:
        write_csv(rows, meta["device"], args.out)
    for row in rows:
        if "profile_families_ms" in row:
            title = f"cpembed {row['precision']} batch {row['batch_size']} compiled={row['compiled']}"
            title += f" memory budget {row['memory_budget']}, training step"
            print(format_profile(row, title), flush=True)
    print(f"ratios: samples/s over the reference row; total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
