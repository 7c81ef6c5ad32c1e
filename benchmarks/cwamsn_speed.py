"""CWA-MSN training and inference throughput: full MSN step with and without the HDF5 data pipeline.

(a) baseline: uint8 batches already on the device; each step crops the views on the device (1 random + 10 focal
    anchor views, 1 target view), runs the MSN loss under bf16 autocast, AdamW, and the EMA update, launched
    kernel by kernel from Python (``MSNTrainingStep(..., cuda_graph=False)``);
(e) the same step recorded once as a CUDA graph and replayed (``MSNTrainingStep``'s default on CUDA, as
    ``CWAMSN.train`` runs it);
(b) the step of ``CWAMSN.train`` fed by the data pipeline: cross-well pairs sampled and read from an on-disk HDF5
    store (one chunk per image) by DataLoader workers, pinned, and copied to the device on a side stream while the
    previous step runs (``cpembed.model._cwamsn_data``, importable with torch alone);
(c) inference: EMA encoder forward on 224 px images;
(d) the data pipeline of (b) alone, without training: whether it can keep up with the step.

``--profile`` adds the device time of two steps of (a) by kernel family and the kernels that take the most time.
``--out`` appends the run's throughputs as one row to a CSV file (written with its header when new), so several
runs make one table, the one the benchmarks page includes.

Needs torch, numpy and h5py only (``cpembed.module`` is imported from this checkout's ``src``). Example (one H100):
    python benchmarks/cwamsn_speed.py --device cuda --batch-size 256 --steps 30
Tiny CPU check:
    python benchmarks/cwamsn_speed.py --device cpu --batch-size 4 --steps 2 --image-size 32 --depth 1 --width 32
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import torch
from _profile import format_profile, profile_steps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import cpembed.module as cm
from cpembed.model._cwamsn_data import CrossWellSampler, PairBatches, prefetch_to_device


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--focal-size", type=int, default=None, help="default: 96/224 of image size")
    parser.add_argument("--n-focal", type=int, default=10)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--heads", type=int, default=None, help="default: width // 64")
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--hidden-dim", type=int, default=2048)
    parser.add_argument("--out-dim", type=int, default=256)
    parser.add_argument("--prototypes", type=int, default=1024)
    parser.add_argument("--tile-size", type=int, default=None, help="stored tile side (default: the image size)")
    parser.add_argument("--n-images", type=int, default=1024, help="images in the on-disk store")
    parser.add_argument("--workers", type=int, default=8, help="processes (or threads) reading the store")
    parser.add_argument(
        "--loader",
        choices=["auto", "process", "thread"],
        default="auto",
        help="DataLoader worker processes (need /dev/shm room) or a thread pool; auto picks by /dev/shm space",
    )
    parser.add_argument("--inference-batch", type=int, default=1024)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the ViT blocks")
    parser.add_argument("--profile", action="store_true", help="device time of a step (a) by kernel family")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--out", type=Path, default=None, help="CSV file to append this run's row to")
    return parser.parse_args()


def build(args, device, compile_blocks):
    torch.manual_seed(0)
    heads = args.heads or max(1, args.width // 64)
    encoder = cm.VisionTransformer(args.channels, args.image_size, args.patch_size, args.width, args.depth, heads)
    msn = cm.MaskedSiameseNetwork(encoder, args.hidden_dim, args.out_dim, args.prototypes).to(device)
    if compile_blocks:
        # 24 block instances x a few token counts (167 masked, 37 focal, 197 target): room for every variant.
        for limit, value in [
            ("recompile_limit", 256),
            ("cache_size_limit", 256),
            ("accumulated_cache_size_limit", 2048),
        ]:
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), value))
        for block in [*msn.encoder.blocks, *msn.target_encoder.blocks]:
            block.compile()
    return msn


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_store(path, args, tile):
    """Random uint8 tiles, one HDF5 chunk per image (the layout of cpembed.io.build_image_store)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as file:
        images = file.create_dataset(
            "images",
            shape=(args.n_images, args.channels, tile, tile),
            dtype="uint8",
            chunks=(1, args.channels, tile, tile),
        )
        for start in range(0, args.n_images, 64):
            stop = min(start + 64, args.n_images)
            images[start:stop] = rng.integers(0, 256, (stop - start, args.channels, tile, tile), dtype=np.uint8)
        file.attrs["channels"] = [f"ch{i}" for i in range(args.channels)]


def time_batches(batches, consume, device, n_warmup, n_steps):
    """Seconds for ``consume`` to take ``n_steps`` batches of ``batches``, after ``n_warmup`` untimed ones."""
    iterator = iter(batches)
    for step in range(n_warmup + n_steps):
        if step == n_warmup:
            synchronize(device)
            start = time.perf_counter()
        consume(next(iterator))
    synchronize(device)
    return time.perf_counter() - start


def run_steps(training_step, batches, device, n_warmup, n_steps):
    """Time ``n_steps`` training steps after ``n_warmup``; ``batches`` yields (anchor, target) on the device."""

    def train(batch):
        anchor, target = batch[:2]  # the store pipeline also yields the store rows
        training_step(anchor, target, learning_rate=1e-4, weight_decay=0.04, momentum=0.996)

    return time_batches(batches, train, device, n_warmup, n_steps)


def drain_s(batches, device, n_warmup, n_steps):
    """Seconds the data pipeline alone takes to deliver ``n_steps`` batches to the device, after ``n_warmup``."""
    return time_batches(batches, lambda batch: None, device, n_warmup, n_steps)


def device_batches(args, tile, device):
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch_size, args.channels, tile, tile)
    anchor = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
    target = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
    while True:
        yield anchor, target


def pair_dataset(args, store_path, n_batches):
    n_perturbations, wells_per_perturbation = 32, 4
    image_rows = np.arange(args.n_images)
    wells = image_rows % (n_perturbations * wells_per_perturbation)
    perturbations = wells % n_perturbations
    sampler = CrossWellSampler(perturbations, wells, image_rows, cross_well=True)
    return PairBatches(cm.StoreImages(store_path), sampler, args.batch_size, n_batches, seed=0)


def process_batches(args, dataset):
    """torch DataLoader worker processes (batches travel through /dev/shm), pinned by the main process."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=args.workers,
        pin_memory=args.device.startswith("cuda"),
        prefetch_factor=2 if args.workers else None,
    )


def thread_batches(args, dataset):
    """Thread-pool prefetching (no shared memory needed); each batch is pinned in its thread."""
    _ = dataset.images.dataset  # open the file once, before the threads share it
    pin = args.device.startswith("cuda")

    def load(index):
        return tuple(t.pin_memory() if pin else t for t in dataset[index])

    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        pending = deque(pool.submit(load, i) for i in range(min(len(dataset), 2 * max(1, args.workers))))
        submitted = len(pending)
        while pending:
            batch = pending.popleft().result()
            if submitted < len(dataset):
                pending.append(pool.submit(load, submitted))
                submitted += 1
            yield batch


def choose_loader(args, tile):
    if args.loader != "auto":
        return args.loader
    batch_bytes = 2 * args.batch_size * args.channels * tile * tile
    needed = 2 * batch_bytes * max(1, args.workers) * 2
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return "thread"
    return "process" if args.workers and free >= needed else "thread"


def measure_inference(msn, args, device, autocast):
    images = torch.randn(args.inference_batch, args.channels, args.image_size, args.image_size, device=device)
    msn.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        for _ in range(3):
            msn.embed(images)
        synchronize(device)
        start = time.perf_counter()
        n_rounds = max(1, args.steps // 3)
        for _ in range(n_rounds):
            msn.embed(images)
        synchronize(device)
    msn.train()
    return n_rounds * args.inference_batch / (time.perf_counter() - start)


def main():
    args = parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    focal = args.focal_size or max(
        args.patch_size, round(args.image_size * 96 / 224 / args.patch_size) * args.patch_size
    )
    tile = args.tile_size or args.image_size
    views = cm.ViewConfig(args.image_size, focal, args.n_focal)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    on_cuda = device.type == "cuda"
    compile_blocks = on_cuda and not args.no_compile
    msn = build(args, device, compile_blocks)
    compile_note = "compiled blocks" if compile_blocks else "eager"

    def eager_step():
        return cm.MSNTrainingStep(msn, views, autocast_dtype=autocast, cuda_graph=False)

    try:
        baseline_s = run_steps(eager_step(), device_batches(args, tile, device), device, args.warmup, args.steps)
    except Exception as error:  # a compiler failure must not lose the run: fall back to eager once
        if not compile_blocks:
            raise
        print(f"torch.compile failed ({type(error).__name__}: {error}); measuring eager instead.", flush=True)
        compile_note = "eager (compile failed)"
        msn = build(args, device, compile_blocks=False)
        baseline_s = run_steps(eager_step(), device_batches(args, tile, device), device, args.warmup, args.steps)

    profile = None
    if args.profile:
        on_device, step = device_batches(args, tile, device), eager_step()
        profile = profile_steps(lambda: run_steps(step, on_device, device, 0, 1), device)

    # CWAMSN.train's step: a CUDA graph on CUDA (its first steps run eagerly, then it is captured), eager elsewhere.
    # (e) and (b) share it, as the steps of one training run do.
    training_step = cm.MSNTrainingStep(msn, views, autocast_dtype=autocast)
    graphed_s = None
    if on_cuda:
        torch.cuda.empty_cache()  # the eager steps' cached blocks: the graph keeps a memory pool of its own
        graphed_s = run_steps(training_step, device_batches(args, tile, device), device, args.warmup, args.steps)

    with tempfile.TemporaryDirectory() as folder:
        store_path = Path(folder) / "store.h5"
        start = time.perf_counter()
        write_store(store_path, args, tile)
        write_s = time.perf_counter() - start
        loader_kind = choose_loader(args, tile)
        n_batches = args.warmup + args.steps

        def pipeline(kind):
            make = {"process": process_batches, "thread": thread_batches}[kind]
            return prefetch_to_device(make(args, pair_dataset(args, store_path, n_batches)), device)

        def train_from_store(kind):
            return run_steps(training_step, pipeline(kind), device, args.warmup, args.steps)

        try:
            pipeline_s = train_from_store(loader_kind)
        except RuntimeError as error:  # e.g. /dev/shm too small for worker processes: measure with threads
            if loader_kind != "process":
                raise
            print(f"process loader failed ({error}); measuring the thread loader instead.", flush=True)
            loader_kind = "thread"
            pipeline_s = train_from_store(loader_kind)
        loader_s = drain_s(pipeline(loader_kind), device, args.warmup, args.steps)

    inference = measure_inference(msn, args, device, autocast)
    samples = args.steps * args.batch_size
    baseline, pipeline, loader = samples / baseline_s, samples / pipeline_s, samples / loader_s
    graphed = samples / graphed_s if graphed_s else None
    name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    n_params = sum(p.numel() for p in msn.encoder.parameters())
    print(
        f"\nCWA-MSN speed on {name} ({compile_note}, {'bf16 autocast' if autocast else 'fp32'}):"
        f" ViT {n_params / 1e6:.1f}M params, depth {args.depth}, width {args.width}, patch {args.patch_size},"
        f" {args.channels} channels,"
        f" {args.image_size} px + {args.n_focal} x {focal} px focal views, batch {args.batch_size}, {args.steps} steps,"
        f" store of {args.n_images} tiles {tile} px written in {write_s:.1f} s, {args.workers} {loader_kind} workers\n"
    )
    rows = [
        ("(a) eager training step, batches on device (baseline)", baseline, "samples/s"),
        ("(e) CUDA-graph training step, batches on device", graphed, "samples/s"),
        ("(b) training step of CWAMSN.train + HDF5 data pipeline", pipeline, "samples/s"),
        ("(c) inference (EMA encoder forward)", inference, "images/s"),
        ("(d) data pipeline alone, to the device", loader, "samples/s"),
    ]
    for label, value, unit in rows:
        shown = f"{value:>12,.1f}" if value is not None else f"{'(CUDA only)':>12}"
        print(f"{label:<56} {shown} {unit}")
    print(f"{'ratio (b) / (a)':<56} {pipeline / baseline:>12.3f}")
    print("targets: (b) >= 2,400 samples/s and (c) >= 20,000 images/s on one H100")
    if profile is not None:
        print(format_profile(profile, f"eager training step (a), batch {args.batch_size}"))
    if args.out is not None:
        append_csv_row(
            args.out,
            {
                "device": name,
                "batch size": args.batch_size,
                "steps": args.steps,
                "(a) eager step, samples/s": baseline,
                "(e) CUDA-graph step, samples/s": graphed,
                "(b) CWAMSN.train step + HDF5 pipeline, samples/s": pipeline,
                "(c) inference, images/s": inference,
                "(d) pipeline alone, samples/s": loader,
            },
        )
    if args.json_out:
        result = {
            "device": name,
            "compile": compile_note,
            "loader": loader_kind,
            "args": vars(args),
            "train_samples_per_s_baseline": baseline,
            "train_samples_per_s_cuda_graph": graphed,
            "train_samples_per_s_pipeline": pipeline,
            "pipeline_ratio": pipeline / baseline,
            "pipeline_alone_samples_per_s": loader,
            "inference_images_per_s": inference,
            **(profile or {}),
        }
        Path(args.json_out).write_text(json.dumps(result, indent=2))


def append_csv_row(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV file ``path`` (throughputs rounded to whole samples), with a header if it is new."""
    import csv

    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(row)
        writer.writerow(round(value) if isinstance(value, float) else value for value in row.values())


if __name__ == "__main__":
    main()
