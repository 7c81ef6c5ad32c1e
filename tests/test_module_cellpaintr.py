import ast
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import energy_distance

from cpembed.module import (
    CellPainTRModule,
    HyenaOperator,
    bidirectional_fft_conv,
    distribution_alignment_loss,
    fast_fft_size,
    masked_feature_loss,
    replicate_alignment_loss,
    sample_feature_mask,
    similarity_structure_loss,
    supervised_contrastive_loss,
)
from cpembed.module._hyena import _BidirectionalFFTConv, centred_depthwise_conv, decay_window, lag_positional_features

REPO = Path(__file__).resolve().parents[1]
CELLPAINTR_FILES = ["_hyena.py", "_embeddings.py", "_cellpaintr.py", "_losses.py"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one thread avoids OpenMP spinning on a busy machine (seconds instead of minutes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_module(n_features=12, n_sources=3, **kwargs):
    groups = torch.arange(n_features) % 4
    params = {"d_model": 16, "n_layers": 2, "d_mlp": 32, "filter_width": 8, "dropout": 0.0}
    return CellPainTRModule(n_features, n_sources, groups, **(params | kwargs))


# ---------------------------------------------------------------- brute-force references kept beside the fast code


def direct_bidirectional_conv(u, taps):
    """O(L^2) double loop: y[b, i, c] = sum_j taps[i - j + L - 1, c] * u[b, j, c]."""
    length = u.shape[1]
    y = torch.zeros_like(u)
    for i in range(length):
        for j in range(length):
            y[:, i] += taps[i - j + length - 1] * u[:, j]
    return y


def loop_group_mse(reconstruction, target, mask, groups):
    per_group = []
    for g in np.unique(groups):
        errors = [
            (reconstruction[b, f] - target[b, f]) ** 2
            for b in range(mask.shape[0])
            for f in range(mask.shape[1])
            if mask[b, f] and groups[f] == g
        ]
        if errors:
            per_group.append(sum(errors) / len(errors))
    return sum(per_group) / len(per_group)


def loop_supcon(embedding, labels, temperature):
    z = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(np.exp(z[i] @ z[a] / temperature) for a in range(len(z)) if a != i)
        losses.append(-np.mean([np.log(np.exp(z[i] @ z[p] / temperature) / denominator) for p in positives]))
    return float(np.mean(losses))


# ---------------------------------------------------------------- Hyena operator


@pytest.mark.parametrize(("length", "fft_size"), [(1, None), (6, None), (9, None), (9, 17), (9, 64)])
def test_fft_conv_equals_direct_convolution(length, fft_size):
    gen = torch.Generator().manual_seed(length)
    u = torch.randn(2, length, 3, dtype=torch.float64, generator=gen)
    taps = torch.randn(2 * length - 1, 3, dtype=torch.float64, generator=gen)
    expected = direct_bidirectional_conv(u, taps)
    torch.testing.assert_close(bidirectional_fft_conv(u, taps, fft_size), expected, rtol=1e-12, atol=1e-12)
    # the same numbers as the centred slice [L-1, 2L-1) of numpy's full linear convolution
    full = np.stack([[np.convolve(u[b, :, c], taps[:, c]) for c in range(3)] for b in range(2)])
    np.testing.assert_allclose(full[:, :, length - 1 : 2 * length - 1].transpose(0, 2, 1), expected, atol=1e-12)


def test_fft_conv_backward_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    taps = torch.randn(13, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    for fft_size in (14, 30):
        assert torch.autograd.gradcheck(lambda a, b, n=fft_size: _BidirectionalFFTConv.apply(a, b, n), (u, taps))


def test_fft_conv_rejects_bad_shapes():
    u = torch.randn(1, 5, 2)
    with pytest.raises(ValueError, match="taps"):
        bidirectional_fft_conv(u, torch.randn(5, 2))
    with pytest.raises(ValueError, match="fft_size"):
        bidirectional_fft_conv(u, torch.randn(9, 2), fft_size=8)


def test_fast_fft_size_is_smallest_even_7_smooth():
    def smooth(n):
        for p in (2, 3, 5, 7):
            while n % p == 0:
                n //= p
        return n == 1

    for minimum in range(1, 400):
        size = fast_fft_size(minimum)
        assert size >= minimum
        assert size % 2 == 0
        assert smooth(size)
        assert not any(smooth(n) for n in range(minimum + (minimum % 2), size, 2))
    jump_length = 3255 + 2
    assert fast_fft_size(2 * jump_length - 1) == 6720
    assert (3 * jump_length - 1) % 977 == 0  # the reference's FFT length has a large prime factor


def test_short_conv_is_centred():
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(2, 6, 4, generator=gen)
    weight, bias = torch.randn(4, 3, generator=gen), torch.randn(4, generator=gen)
    conv = torch.nn.functional.conv1d(u.transpose(1, 2), weight[:, None], bias, padding=1, groups=4)
    torch.testing.assert_close(centred_depthwise_conv(u, weight, bias), conv.transpose(1, 2))
    inputs = (u.double().requires_grad_(), weight.double().requires_grad_(), bias.double().requires_grad_())
    assert torch.autograd.gradcheck(centred_depthwise_conv, inputs)


def test_filter_window_is_symmetric_and_bands_have_distinct_frequencies():
    window = decay_window(50, 8)
    torch.testing.assert_close(window, window.flip(0))
    assert window.max() <= 1.0
    assert window[49].eq(1.0).all()
    positions = lag_positional_features(50, 4)
    assert positions.shape == (99, 9)
    assert positions[:, 0].min() == -1
    assert positions[:, 0].max() == 1
    # every band varies along the lags, and no two bands are equal
    assert (positions[:, 1:].std(dim=0) > 0.1).all()
    assert torch.linalg.matrix_rank(positions.double()) == 9


def test_hyena_output_sees_both_sides():
    torch.manual_seed(0)
    operator = HyenaOperator(8, 11, filter_width=8).double()
    x = torch.randn(1, 11, 8, dtype=torch.float64, requires_grad=True)
    i = 5
    (grad,) = torch.autograd.grad(operator(x)[0, i].sum(), x)
    influence = grad[0].abs().sum(dim=1)
    assert (influence[:i] > 0).all()
    assert (influence[i + 1 :] > 0).all()
    # beyond the short convolution's reach (|i - j| > 1) the long filter carries the dependence both ways
    assert influence[0] > 1e-8
    assert influence[-1] > 1e-8


def test_hyena_rejects_other_lengths():
    with pytest.raises(ValueError, match="length 11"):
        HyenaOperator(8, 11)(torch.randn(1, 10, 8))


# ---------------------------------------------------------------- masking and losses


def test_only_nonzero_values_are_masked():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 40, generator=gen) * (torch.rand(6, 40, generator=gen) > 0.3)
    for groups in (None, torch.arange(40) % 5):
        assert torch.equal(sample_feature_mask(x, 1.0, groups, gen), x != 0)
        assert not sample_feature_mask(x, 0.5, groups, gen)[x == 0].any()
        assert not sample_feature_mask(x, 0.0, groups, gen).any()


def test_group_masking_masks_whole_groups():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 30, generator=gen)
    groups = torch.arange(30) % 6
    mask = sample_feature_mask(x, 0.3, groups, gen)
    for g in range(6):
        in_group = mask[:, groups == g]
        assert (in_group.all(dim=1) | ~in_group.any(dim=1)).all()
    assert abs(mask.float().mean().item() - 0.3) < 0.05
    iid = sample_feature_mask(x, 0.3, None, gen)
    assert not (iid[:, groups == 0].all(dim=1) | ~iid[:, groups == 0].any(dim=1)).all()


def test_mask_ratio_per_sample_and_reproducible():
    x = torch.randn(4, 20)
    ratio = torch.tensor([0.0, 1.0, 0.0, 1.0])
    mask = sample_feature_mask(x, ratio, torch.arange(20) % 4)
    assert not mask[[0, 2]].any()
    assert mask[[1, 3]].all()
    first = sample_feature_mask(x, 0.4, None, torch.Generator().manual_seed(3))
    assert torch.equal(first, sample_feature_mask(x, 0.4, None, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="mask_ratio"):
        sample_feature_mask(x, torch.tensor([0.1, 0.2]), None)
    with pytest.raises(ValueError, match="feature_groups"):
        sample_feature_mask(x, 0.1, torch.arange(5))


def test_group_loss_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    reconstruction, target = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 4, 4])
    mask = torch.rand(5, 16, generator=gen) < 0.3
    mask[:, groups == 3] = False  # a group without masked features is left out of the average
    expected = loop_group_mse(reconstruction.numpy(), target.numpy(), mask.numpy(), groups.numpy())
    assert masked_feature_loss(reconstruction, target, mask, groups).item() == pytest.approx(expected, rel=1e-6)
    assert masked_feature_loss(reconstruction, target, mask, groups, n_groups=5).item() == pytest.approx(expected)
    global_mse = ((reconstruction - target) ** 2)[mask].mean().item()
    assert masked_feature_loss(reconstruction, target, mask, None).item() == pytest.approx(global_mse, rel=1e-6)


def test_loss_without_masked_features_is_zero_with_gradient():
    reconstruction = torch.randn(3, 8, requires_grad=True)
    nothing = torch.zeros(3, 8, dtype=torch.bool)
    for groups in (None, torch.arange(8) % 2):
        loss = masked_feature_loss(reconstruction, torch.randn(3, 8), nothing, groups)
        loss.backward()
        assert loss.item() == 0
        assert reconstruction.grad.abs().sum() == 0


def test_supcon_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    embedding = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 0])  # labels 2 and 4 have no positive
    for temperature in (0.07, 0.5):
        expected = loop_supcon(embedding.numpy(), labels.numpy(), temperature)
        loss = supervised_contrastive_loss(embedding, labels, temperature)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
    scaled = supervised_contrastive_loss(3 * embedding, labels)
    assert scaled.item() == pytest.approx(supervised_contrastive_loss(embedding, labels).item(), rel=1e-5)


def test_supcon_without_positives_is_zero_and_finite():
    embedding = torch.randn(4, 3, requires_grad=True)
    loss = supervised_contrastive_loss(embedding, torch.arange(4))
    loss.backward()
    assert loss.item() == 0
    assert torch.isfinite(embedding.grad).all()
    single = torch.randn(1, 3, requires_grad=True)
    supervised_contrastive_loss(single, torch.zeros(1, dtype=torch.long)).backward()
    assert torch.isfinite(single.grad).all()


# ---------------------------------------------------------------- network


def test_forward_shapes_and_embed():
    torch.manual_seed(0)
    module = tiny_module().eval()
    x, source = torch.randn(5, 12), torch.tensor([0, 1, 2, 3, 0])  # 3 = unknown source
    out = module(x, source)
    assert out["embedding"].shape == (5, 16)
    assert out["reconstruction"].shape == (5, 12)
    torch.testing.assert_close(module.embed(x, source), out["embedding"])
    # the embedding is the output of the final LayerNorm (no projection head)
    torch.testing.assert_close(out["embedding"].mean(dim=1), torch.zeros(5) + module.final_norm.bias.mean())


def test_cls_embedding_depends_on_every_feature():
    torch.manual_seed(0)
    module = tiny_module().double()
    x = torch.randn(2, 12, dtype=torch.float64, requires_grad=True)
    projection = torch.randn(16, dtype=torch.float64)  # a plain sum of a LayerNorm output does not depend on x
    (grad,) = torch.autograd.grad((module.embed(x, torch.tensor([0, 1])) @ projection).sum(), x)
    assert (grad.abs() > 0).all()


def test_masked_values_do_not_reach_the_network():
    torch.manual_seed(0)
    module = tiny_module().eval()
    x = torch.randn(3, 12)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[:, [2, 7]] = True
    changed = x.clone()
    changed[:, [2, 7]] = 100.0
    source = torch.tensor([0, 1, 2])
    masked_out = module(x, source, mask)["reconstruction"]
    torch.testing.assert_close(masked_out, module(changed, source, mask)["reconstruction"])
    assert not torch.allclose(module(x, source)["reconstruction"], module(changed, source)["reconstruction"])


def test_unknown_source_token():
    module = tiny_module(n_sources=3)
    assert module.unknown_source_index == 3
    assert module.embeddings.source_embedding.num_embeddings == 4
    plain = tiny_module(n_sources=3, unknown_source=False)
    assert plain.unknown_source_index is None
    assert plain.embeddings.source_embedding.num_embeddings == 3


def test_add_sources_keeps_existing_embeddings():
    torch.manual_seed(0)
    module = tiny_module(n_sources=3).eval()
    x = torch.randn(4, 12)
    before = module.embeddings.source_embedding.weight.detach().clone()
    known_out = module.embed(x, torch.tensor([0, 1, 2, 2]))
    unknown_out = module.embed(x, torch.full((4,), 3))
    module.add_sources(2)
    after = module.embeddings.source_embedding.weight.detach()
    assert module.n_sources == 5
    assert module.unknown_source_index == 5
    assert after.shape == (6, 16)
    torch.testing.assert_close(after[:3], before[:3])
    torch.testing.assert_close(after[5], before[3])
    torch.testing.assert_close(after[3:5], before[3].expand(2, -1))  # new tokens start at the unknown token
    torch.testing.assert_close(module.embed(x, torch.tensor([0, 1, 2, 2])), known_out)
    torch.testing.assert_close(module.embed(x, torch.full((4,), 5)), unknown_out)
    assert [p.shape for p in module.source_parameters()] == [(6, 16)]
    plain = tiny_module(n_sources=2, unknown_source=False)
    plain.add_sources(1)
    old = plain.embeddings.source_embedding.weight.detach()
    torch.testing.assert_close(old[2], old[:2].mean(dim=0))
    with pytest.raises(ValueError, match="n_new"):
        module.add_sources(0)


def test_bf16_autocast_runs_with_fp32_fft():
    torch.manual_seed(0)
    module = tiny_module()
    x, source = torch.randn(3, 12), torch.tensor([0, 1, 2])
    fft_inputs, projections = [], []
    rfft, irfft = torch.fft.rfft, torch.fft.irfft

    def record_rfft(inp, *args, **kwargs):
        fft_inputs.append(inp.dtype)
        return rfft(inp, *args, **kwargs)

    def record_irfft(inp, *args, **kwargs):
        fft_inputs.append(inp.dtype)
        return irfft(inp, *args, **kwargs)

    module.blocks[0].mixer.in_proj.register_forward_hook(lambda mod, args, out: projections.append(out.dtype))
    with (
        mock.patch.object(torch.fft, "rfft", record_rfft),
        mock.patch.object(torch.fft, "irfft", record_irfft),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        out = module(x, source, sample_feature_mask(x, 0.3, module.feature_groups))
        loss = out["reconstruction"].float().square().mean()
    loss.backward()
    assert projections == [torch.bfloat16]
    assert fft_inputs
    assert set(fft_inputs) <= {torch.float32, torch.complex64}
    assert module.blocks[0].mixer.long_filter.mlp[0].weight.grad.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    module = tiny_module()
    x, source = torch.randn(3, 12), torch.tensor([0, 1, 2])
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[:, 0] = True
    grads = []
    for checkpointing in (False, True):
        module.gradient_checkpointing = checkpointing
        module.zero_grad()
        module(x, source, mask)["reconstruction"].square().sum().backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed)


def test_tiny_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    module = tiny_module(n_features=10)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 10, generator=gen)
    source = torch.randint(0, 3, (8,), generator=gen)
    mask = sample_feature_mask(x, 0.3, None, gen)
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(80):
        loss = masked_feature_loss(module(x, source, mask)["reconstruction"], x, mask, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_invalid_inputs_are_named():
    module = tiny_module()
    with pytest.raises(ValueError, match="x"):
        module(torch.randn(2, 11), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="source"):
        module(torch.randn(2, 12), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="mask"):
        module(torch.randn(2, 12), torch.tensor([0, 1]), torch.zeros(2, 12))
    with pytest.raises(ValueError, match="feature_groups"):
        CellPainTRModule(12, 2, [0] * 11)


def test_filter_parameters_are_listed():
    module = tiny_module()
    names = {id(p): n for n, p in module.named_parameters()}
    listed = [names[id(p)] for p in module.filter_parameters()]
    assert listed
    assert all("mixer.long_filter" in n or n.endswith("mixer.bias") for n in listed)


# ---------------------------------------------------------------- packaging: torch alone


def test_network_files_import_only_torch_numpy_and_stdlib():
    """The network files need torch and numpy alone (and cpembed._compat, which imports the standard library only)."""
    allowed = {
        "torch",
        "numpy",
        "math",
        "collections",
        "contextlib",
        "typing",
        "__future__",
        "dataclasses",
        "functools",
    }
    for name in CELLPAINTR_FILES:
        tree = ast.parse((REPO / "src" / "cpembed" / "module" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = set() if node.module == "cpembed._compat" else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}"
    compat = ast.parse((REPO / "src" / "cpembed" / "_compat.py").read_text())
    roots = set()
    for node in compat.body:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "importlib", "typing"}


def test_activation_memory_budget_applies_to_the_compiled_blocks_only():
    """The budget is in force while the blocks run (where they compile), and torch's setting is left as it was."""
    from torch._functorch import config as functorch_config

    torch.manual_seed(0)
    module = tiny_module()
    x, source = torch.randn(3, 12), torch.tensor([0, 1, 2])
    expected = module(x, source)["embedding"]
    seen = []
    module.blocks[0].register_forward_pre_hook(lambda *_: seen.append(functorch_config.activation_memory_budget))
    before = functorch_config.activation_memory_budget
    module.activation_memory_budget = 0.6  # what compile_blocks(activation_memory_budget=0.6) records
    torch.testing.assert_close(module(x, source)["embedding"], expected)
    assert seen == [0.6]
    assert functorch_config.activation_memory_budget == before
    with pytest.raises(ValueError, match="activation_memory_budget"):
        module.compile_blocks(activation_memory_budget=1.5)


@pytest.mark.slow
def test_speed_benchmark_runs_with_torch_alone(tmp_path, run_benchmark_torch_only):
    """The benchmark must run where only torch and numpy are installed (cpembed's heavy dependencies blocked)."""
    out = tmp_path / "speed.json"
    args = ["--device", "cpu", "--n-features", "30", "--d-model", "16", "--batch-sizes", "4", "--steps", "1"]
    args += ["--warmup", "0", "--compile", "off", "--precisions", "bf16", "--baseline-batch-size", "2"]
    args += ["--n-layers", "1", "--json-out", str(out), "--profile"]
    result = run_benchmark_torch_only("cellpaintr_speed.py", args)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert {row["implementation"] for row in rows} == {"reference", "cpembed"}
    assert all(row["train_samples_per_s"] > 0 and row["inference_samples_per_s"] > 0 for row in rows)
    assert "train samples/s" in result.stdout
    profile = next(row for row in rows if row["implementation"] == "cpembed")["profile_families_ms"]
    assert profile["matmul"] > 0
    assert "fft" in profile


# ---------------------------------------------------------------- replicate alignment and the linear path


def loop_alignment(embedding, labels, groups=None):
    """Brute force: the replicates (wells, or each group's centroid of a label) around their label's centroid."""
    points, point_labels = [], []
    for label in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == label)
        if groups is None:
            points += [embedding[row] for row in rows]
            point_labels += [label] * len(rows)
        else:
            for group in np.unique(groups[rows]):
                points.append(embedding[rows[groups[rows] == group]].mean(axis=0))
                point_labels.append(label)
    points, point_labels = np.array(points), np.array(point_labels)
    distances = []
    for label in np.unique(point_labels):
        members = points[point_labels == label]
        if len(members) > 1:
            distances += [((member - members.mean(axis=0)) ** 2).sum() for member in members]
    return np.mean(distances) if distances else 0.0


@pytest.mark.parametrize("use_groups", [False, True])
def test_replicate_alignment_equals_brute_force(use_groups):
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(-1, 7, (40,), generator=generator)
    groups = torch.randint(0, 3, (40,), generator=generator) if use_groups else None
    loss = replicate_alignment_loss(embedding, labels, 2.5, groups)
    expected = loop_alignment(embedding.numpy(), labels.numpy(), None if groups is None else groups.numpy()) / 2.5
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_alignment_across_sources_ignores_spread_within_a_source():
    """Two sources whose wells of a compound scatter around the same centroid: nothing to align across sources."""
    embedding = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    labels, sources = torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 1])
    assert float(replicate_alignment_loss(embedding, labels, 1.0, sources)) == 0.0
    assert float(replicate_alignment_loss(embedding, labels, 1.0)) == pytest.approx(1.0)
    unique = torch.arange(4)
    loss = replicate_alignment_loss(embedding, unique, 1.0)  # no label repeats: zero, still in the graph
    loss.backward()
    assert float(loss) == 0.0
    assert embedding.grad is not None


def loop_energy_distances(embedding, labels, groups):
    """Mean energy distance over (label, group) pairs, written with scipy's cdist and plain loops."""
    terms = []
    for label in np.unique(labels[labels >= 0]):
        of_label = labels == label
        if len(np.unique(groups[of_label])) < 2:
            continue
        for group in np.unique(groups[of_label]):
            inside = embedding[of_label & (groups == group)]
            outside = embedding[of_label & (groups != group)]
            terms.append(
                2 * cdist(inside, outside).mean() - cdist(inside, inside).mean() - cdist(outside, outside).mean()
            )
    return np.mean(terms) if terms else 0.0


def test_distribution_alignment_equals_brute_force():
    generator = torch.Generator().manual_seed(1)
    embedding = torch.randn(50, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(-1, 6, (50,), generator=generator)
    groups = torch.randint(0, 4, (50,), generator=generator)
    loss = distribution_alignment_loss(embedding, labels, groups, 4.0)
    expected = loop_energy_distances(embedding.numpy(), labels.numpy(), groups.numpy()) / 2.0
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_distribution_alignment_is_scipys_energy_distance_in_one_dimension():
    """scipy.stats.energy_distance is the square root of the term for one label in two groups."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=7), rng.normal(1.0, 2.0, size=9)
    embedding = torch.tensor(np.concatenate([x, y])[:, None])
    labels = torch.zeros(16, dtype=torch.long)
    groups = torch.tensor([0] * 7 + [1] * 9)
    # Both groups' terms are the same distance, so their mean is it.
    expected = energy_distance(x, y) ** 2
    np.testing.assert_allclose(float(distribution_alignment_loss(embedding, labels, groups, 1.0)), expected, rtol=1e-6)


@pytest.mark.parametrize("loss", [replicate_alignment_loss, distribution_alignment_loss])
def test_alignment_losses_refuse_groups_of_another_length(loss):
    embedding, labels = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="Expected `groups` of shape"):
        loss(embedding, labels, groups=torch.zeros(3, dtype=torch.long), scale=1.0)


def test_distribution_alignment_sees_spread_that_centroids_miss():
    """Two sources whose controls share a centroid but not a spread: centroid alignment is zero, this is not."""
    embedding = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [3.0, 0.0], [-3.0, 0.0]], requires_grad=True)
    labels, sources = torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 1])
    assert float(replicate_alignment_loss(embedding, labels, 1.0, sources)) == 0.0
    loss = distribution_alignment_loss(embedding, labels, sources, 1.0)
    loss.backward()
    assert float(loss) > 0.5
    assert torch.all(torch.isfinite(embedding.grad))
    same = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert float(distribution_alignment_loss(same, labels, sources, 1.0)) == pytest.approx(0.0, abs=1e-6)
    one_source = distribution_alignment_loss(embedding, labels, torch.zeros(4, dtype=torch.long), 1.0)
    assert float(one_source) == 0.0


def test_linear_path_starts_as_the_pca_projection():
    """Before training, distances between embeddings are those of the top principal components (numpy SVD)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 12)) @ rng.normal(size=(12, 12))
    centred = x - x.mean(axis=0)
    _, singular_values, components = np.linalg.svd(centred, full_matrices=False)
    module = tiny_module(n_features=12, linear_path=True, readout="mean").eval()
    module.set_projection(x.mean(axis=0), components[:5].T, variance=float((singular_values[:5] ** 2).sum() / 29))
    embedding = module.embed(torch.as_tensor(x, dtype=torch.float32), torch.zeros(30, dtype=torch.long)).detach()
    assert embedding.shape == (30, 16)
    np.testing.assert_allclose(embedding[:, 5:].numpy(), 0.0, atol=1e-6)
    expected = centred @ components[:5].T
    found = embedding.numpy().astype(np.float64)
    np.testing.assert_allclose(
        np.linalg.norm(found[:, None] - found[None], axis=-1),
        np.linalg.norm(expected[:, None] - expected[None], axis=-1),
        rtol=1e-4,
        atol=1e-4,
    )


def test_n_latent_sets_the_width_of_the_linear_path():
    """With n_latent the embedding has that many dimensions, starts as that many principal components (numpy SVD),
    and the transformer keeps its d_model; n_latent needs the linear path."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(25, 12)) @ rng.normal(size=(12, 12))
    _, _, components = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    module = tiny_module(n_features=12, linear_path=True, readout="mean", n_latent=3).eval()
    assert module.embedding_dim == 3
    assert module.final_norm.normalized_shape == (16,)
    module.set_projection(x.mean(axis=0), components[:3].T, variance=1.0)
    embedding = module.embed(torch.as_tensor(x, dtype=torch.float32), torch.zeros(25, dtype=torch.long)).detach()
    np.testing.assert_allclose(embedding.numpy(), (x - x.mean(axis=0)) @ components[:3].T, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="more than the embedding's 3"):
        module.set_projection(torch.zeros(12), torch.zeros(12, 4), 1.0)
    with pytest.raises(ValueError, match="linear_path"):
        tiny_module(n_latent=3)
    with pytest.raises(ValueError, match="positive"):
        tiny_module(linear_path=True, n_latent=0)


def test_linear_path_refuses_bad_projections():
    module = tiny_module(linear_path=True)
    with pytest.raises(ValueError, match="more than the embedding's 16"):
        module.set_projection(torch.zeros(12), torch.zeros(12, 17), 1.0)
    with pytest.raises(ValueError, match="Expected center"):
        module.set_projection(torch.zeros(11), torch.zeros(12, 3), 1.0)
    with pytest.raises(ValueError, match="variance"):
        module.set_projection(torch.zeros(12), torch.zeros(12, 3), 0.0)
    with pytest.raises(ValueError, match="readout"):
        tiny_module(readout="max")


def test_similarity_structure_equals_brute_force_and_ignores_scale():
    generator = torch.Generator().manual_seed(1)
    embedding = torch.randn(9, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    reference = torch.randn(9, 7, generator=generator, dtype=torch.float64)

    def cosine(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    e, r = embedding.detach().numpy(), reference.numpy()
    pairs = [(i, j) for i in range(9) for j in range(9) if i != j]
    expected = np.mean([(cosine(e[i], e[j]) - cosine(r[i], r[j])) ** 2 for i, j in pairs])
    loss = similarity_structure_loss(embedding, reference)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    loss.backward()
    assert embedding.grad is not None
    assert float(similarity_structure_loss(3.0 * reference, reference)) == pytest.approx(0.0, abs=1e-6)


def test_linear_path_projects_missing_features_as_the_network_predicts_them():
    """With a reconstruction head that predicts the constant 2.5, a missing feature enters the projection as 2.5, not
    as the 0 it was read as (the correction is zero before training)."""
    rng = np.random.default_rng(1)
    module = tiny_module(n_features=12, linear_path=True, readout="mean").eval()
    center, components = rng.normal(size=12), np.linalg.qr(rng.normal(size=(12, 4)))[0]
    module.set_projection(center, components, variance=1.0)
    with torch.no_grad():
        module.reconstruction_head[-1].weight.zero_()
        module.reconstruction_head[-1].bias.fill_(2.5)
    x = rng.normal(size=(6, 12))
    missing = np.zeros(12, dtype=bool)
    missing[[1, 7, 8]] = True
    read = np.where(missing, 0.0, x)
    mask = torch.as_tensor(np.broadcast_to(missing, x.shape).copy())
    embedding = module.embed(torch.as_tensor(read, dtype=torch.float32), torch.zeros(6, dtype=torch.long), mask)
    expected = (np.where(missing, 2.5, x) - center) @ components
    np.testing.assert_allclose(embedding.detach().numpy()[:, :4], expected, rtol=1e-5, atol=1e-5)
    unmasked = module.embed(torch.as_tensor(read, dtype=torch.float32), torch.zeros(6, dtype=torch.long))
    np.testing.assert_allclose(unmasked.detach().numpy()[:, :4], (read - center) @ components, rtol=1e-5, atol=1e-5)
