"""Where a step's time goes: device time of a few steps by kernel family, and the most expensive kernels.

Shared by the speed scripts (``--profile``). On a GPU the events are CUDA kernels; on a CPU they are ATen operators
timed by their own (self) CPU time, which keeps the option testable without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

KERNEL_FAMILIES = (  # first match wins; names as cuBLAS, cuFFT, Inductor and ATen report them
    ("matmul", ("gemm", "cutlass", "cublas", "xmma", "nvjet", "aten::mm", "aten::addmm", "aten::bmm")),
    ("attention", ("flash", "fmha", "attention")),
    ("fft", ("fft", "bluestein", "preprocess_kernel", "postprocess_kernel")),
    ("compiled (Triton)", ("triton",)),
    ("copy / layout", ("copy", "transpose", "cat", "pad", "memcpy", "memset")),
    ("reduction", ("reduce",)),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
)
NAME_WIDTH = 160


def kernel_family(name: str) -> str:
    """Family of a kernel or operator name (see :data:`KERNEL_FAMILIES`), ``"other"`` when none matches."""
    lowered = name.lower()
    return next((family for family, keys in KERNEL_FAMILIES if any(key in lowered for key in keys)), "other")


def profile_steps(step: Callable[[], None], device: torch.device, n_steps: int = 2, n_top: int = 15) -> dict:
    """Profile ``n_steps`` calls of ``step``; times are milliseconds per step.

    Returns ``profile_device_ms_per_step``, ``profile_families_ms`` (largest first) and ``profile_top_kernels_ms``,
    a list of ``(name, ms per step, calls per step)``.
    """
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"

    def milliseconds(event) -> float:
        return (event.device_time_total if on_gpu else event.self_cpu_time_total) / 1e3 / n_steps

    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU], acc_events=True) as prof:
        for _ in range(n_steps):
            step()
        if on_gpu:
            torch.cuda.synchronize(device)
    kernels = [event for event in prof.key_averages() if milliseconds(event) > 0]
    families: dict[str, float] = {}
    for event in kernels:
        family = kernel_family(event.key)
        families[family] = families.get(family, 0.0) + milliseconds(event)
    top = sorted(kernels, key=milliseconds, reverse=True)[:n_top]
    return {
        "profile_device_ms_per_step": sum(map(milliseconds, kernels)),
        "profile_families_ms": dict(sorted(families.items(), key=lambda item: -item[1])),
        "profile_top_kernels_ms": [
            (event.key[:NAME_WIDTH], milliseconds(event), event.count // n_steps) for event in top
        ],
    }


def format_profile(profile: dict, title: str) -> str:
    """The result of :func:`profile_steps` as a text table."""
    lines = [f"\nprofile, {title}: {profile['profile_device_ms_per_step']:.1f} ms of device time per step"]
    lines += [f"  {family:<22}{ms:>9.1f} ms" for family, ms in profile["profile_families_ms"].items()]
    lines.append(f"  {'ms/step':>9}{'calls':>7}  top kernels")
    lines += [f"  {ms:>9.2f}{calls:>7}  {name}" for name, ms, calls in profile["profile_top_kernels_ms"]]
    return "\n".join(lines)
