import copy
import json
import math

import pytest
import torch

from cpembed.module import (
    MaskedSiameseNetwork,
    MSNTrainingStep,
    ViewConfig,
    VisionTransformer,
    ema_update,
    embed_patches,
    keep_random_patches,
    make_views,
    msn_loss,
    parameter_groups,
    random_resized_crop,
    sharpen,
    sinkhorn,
)


def tiny_vit(**kwargs):
    params = {"in_channels": 5, "image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}
    return VisionTransformer(**(params | kwargs))


def test_vit_shapes_and_interpolated_positions():
    torch.manual_seed(0)
    vit = tiny_vit()
    assert vit(torch.randn(3, 5, 32, 32)).shape == (3, 32)
    assert vit(torch.randn(2, 5, 16, 16)).shape == (2, 32)  # focal views: 2x2 grid, interpolated positions
    assert tiny_vit(pool="mean")(torch.randn(2, 5, 32, 32)).shape == (2, 32)


@pytest.mark.parametrize("size", [(32, 32), (16, 24), (37, 41)])
def test_embed_patches_equals_the_patchifying_convolution(size):
    torch.manual_seed(0)
    projection = torch.nn.Conv2d(5, 32, kernel_size=8, stride=8)
    images = torch.randn(3, 5, *size, dtype=torch.float64)
    projection = projection.double()
    expected = projection(images).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed_patches(images, projection), expected, rtol=1e-12, atol=1e-12)


def test_vit_s16_has_about_22m_parameters():
    vit = VisionTransformer(in_channels=5)
    n_params = sum(p.numel() for p in vit.parameters())
    assert 21e6 < n_params < 23e6


def test_keep_random_patches_keeps_85_percent_of_distinct_tokens():
    torch.manual_seed(0)
    tokens = torch.arange(196, dtype=torch.float32).reshape(1, 196, 1).expand(4, -1, 3).contiguous()
    kept = keep_random_patches(tokens, 0.85)
    assert kept.shape == (4, math.floor(196 * 0.85), 3)
    for row in kept[:, :, 0]:
        assert row.unique().numel() == kept.shape[1]  # no token kept twice
    assert not torch.equal(kept[0, :, 0], kept[1, :, 0])  # drawn per image
    with pytest.raises(ValueError, match="keep_ratio"):
        keep_random_patches(tokens, 0.0)


def test_sinkhorn_rows_sum_to_one_and_columns_balance():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(12, 6) * 3, dim=1)
    balanced = sinkhorn(probs, n_iterations=3)
    torch.testing.assert_close(balanced.sum(dim=1), torch.ones(12))
    converged = sinkhorn(probs, n_iterations=500)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((6,), 12 / 6), atol=1e-4, rtol=0)


def test_sharpen_is_power_and_renormalise():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    expected = probs**4 / (probs**4).sum()
    torch.testing.assert_close(sharpen(probs, 0.25), expected)


def brute_force_msn_loss(anchors, targets, prototypes, temperature=0.1, sharpen_t=0.25, n_sinkhorn=3):
    """Loop version of MSN's loss, written from the paper's definitions."""
    k = prototypes.shape[0]
    batch = targets.shape[0]
    n_views = anchors.shape[0] // batch

    def probs(z):
        sims = torch.stack([torch.nn.functional.cosine_similarity(z, p, dim=0) for p in prototypes])
        return torch.exp(sims / temperature) / torch.exp(sims / temperature).sum()

    target_p = torch.stack([probs(t) ** (1 / sharpen_t) for t in targets])
    target_p = target_p / target_p.sum(1, keepdim=True)
    q = target_p / target_p.sum()
    for _ in range(n_sinkhorn):
        q = q / q.sum(0, keepdim=True) / k
        q = q / q.sum(1, keepdim=True) / batch
    q = q * batch
    anchor_p = [probs(a) for a in anchors]
    ce = 0.0
    for v in range(n_views):
        for i in range(batch):
            ce -= sum(q[i, m] * math.log(anchor_p[v * batch + i][m]) for m in range(k))
    ce /= n_views * batch
    mean_p = torch.stack(anchor_p).mean(0)
    entropy = -sum(p * math.log(p) for p in mean_p)
    return ce, math.log(k) - entropy


def test_msn_loss_matches_brute_force():
    torch.manual_seed(1)
    anchors, targets, prototypes = torch.randn(3 * 4, 8), torch.randn(4, 8), torch.randn(5, 8)
    loss = msn_loss(anchors, targets, prototypes, cross_entropy_weight=1.0, me_max_weight=2.0)
    ce, me_max = brute_force_msn_loss(anchors.double(), targets.double(), prototypes.double())
    assert loss.cross_entropy.item() == pytest.approx(float(ce), rel=1e-4)
    assert loss.me_max.item() == pytest.approx(float(me_max), rel=1e-4, abs=1e-6)
    assert loss.total.item() == pytest.approx(float(ce) + 2 * float(me_max), rel=1e-4)


def test_msn_loss_is_fp32_under_bfloat16_inputs():
    torch.manual_seed(0)
    loss = msn_loss(torch.randn(8, 8).bfloat16(), torch.randn(4, 8).bfloat16(), torch.randn(5, 8))
    assert loss.total.dtype == torch.float32


def test_ema_update_formula_and_buffers():
    torch.manual_seed(0)
    online, target = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    online.weight.data.fill_(2.0)
    target.weight.data.fill_(1.0)
    online.running_mean.fill_(5.0)
    ema_update(target, online, momentum=0.9)
    torch.testing.assert_close(target.weight.data, torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
    torch.testing.assert_close(target.running_mean, torch.full((3,), 5.0))
    ema_update(target, online, momentum=torch.tensor(0.5))  # a device scalar, as a replayed CUDA graph passes it
    torch.testing.assert_close(target.weight.data, torch.full((3,), 0.5 * 1.1 + 0.5 * 2.0))


def test_msn_step_trains_anchor_and_not_target():
    torch.manual_seed(0)
    msn = MaskedSiameseNetwork(tiny_vit(), hidden_dim=16, out_dim=8, n_prototypes=10)
    images = torch.randint(0, 255, (4, 5, 40, 40), dtype=torch.uint8)
    random_views = random_resized_crop(images, 32, (0.3, 1.0))
    focal_views = random_resized_crop(images, 16, (0.05, 0.3), n_views=3)
    target_views = random_resized_crop(images, 32, (0.3, 1.0))
    assert focal_views.shape == (12, 5, 16, 16)
    loss = msn(random_views, focal_views, target_views)
    loss.total.backward()
    assert msn.encoder.patch_embed.weight.grad is not None
    assert msn.prototypes.grad is not None
    assert msn.target_encoder.patch_embed.weight.grad is None
    before = msn.target_encoder.patch_embed.weight.clone()
    with torch.no_grad():
        msn.encoder.patch_embed.weight.add_(1.0)
    msn.update_target(0.5)
    torch.testing.assert_close(
        msn.target_encoder.patch_embed.weight, 0.5 * before + 0.5 * msn.encoder.patch_embed.weight
    )
    assert msn.embed(random_views).shape == (4, 32)


def test_random_resized_crop_standardises_each_view():
    torch.manual_seed(0)
    images = torch.randint(0, 255, (2, 3, 50, 50), dtype=torch.uint8)
    views = random_resized_crop(images, 24, (0.3, 1.0), n_views=2)
    assert views.shape == (4, 3, 24, 24)
    torch.testing.assert_close(views.mean(dim=(-2, -1)), torch.zeros(4, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(views.std(dim=(-2, -1)), torch.ones(4, 3), atol=1e-3, rtol=0)


def test_views_standardised_with_given_statistics_of_their_image():
    torch.manual_seed(0)
    images = torch.randint(0, 255, (3, 2, 20, 20), dtype=torch.uint8)
    stats = torch.stack([torch.rand(3, 2), 0.1 + torch.rand(3, 2)], dim=1)
    unit = torch.stack([torch.zeros(3, 2), torch.full((3, 2), 1.0 - 1e-6)], dim=1)  # std + eps = 1: crops unchanged

    def views(channel_stats):
        generator = torch.Generator().manual_seed(1)
        return random_resized_crop(images, 8, (0.3, 1.0), n_views=2, channel_stats=channel_stats, generator=generator)

    per_view = stats.repeat(2, 1, 1)  # view v of image i is row v * 3 + i
    expected = (views(unit) - per_view[:, 0, :, None, None]) / (per_view[:, 1, :, None, None] + 1e-6)
    torch.testing.assert_close(views(stats), expected, rtol=1e-5, atol=1e-5)


def test_full_crop_without_flip_is_identity():
    from cpembed.module._crops import crop_and_resize

    images = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    torch.testing.assert_close(crop_and_resize(images, boxes, 16), images)
    flipped = crop_and_resize(images, boxes, 16, flip=torch.tensor([True, True]))
    torch.testing.assert_close(flipped, images.flip(-1))


def test_crops_sample_the_grid_of_affine_grid_for_their_boxes():
    import torch.nn.functional as F

    from cpembed.module._crops import crop_and_resize, random_crop_boxes

    torch.manual_seed(0)
    images = torch.rand(6, 3, 40, 30)
    boxes = random_crop_boxes(6, (0.05, 1.0))
    flip = torch.rand(6) < 0.5
    theta = torch.zeros(6, 2, 3)
    theta[:, 0, 0] = boxes[:, 2] * torch.where(flip, -1.0, 1.0)
    theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = boxes[:, 0], boxes[:, 3], boxes[:, 1]
    grid = F.affine_grid(theta, [6, 3, 12, 12], align_corners=False)
    expected = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(crop_and_resize(images, boxes, 12, flip), expected, rtol=1e-4, atol=1e-5)


def test_standardisation_equals_the_formula():
    from cpembed.module import to_standardized_float

    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 5, 9, 7), dtype=torch.uint8)
    x = images.double() / 255
    expected = (x - x.mean(dim=(-2, -1), keepdim=True)) / (x.std(dim=(-2, -1), keepdim=True) + 1e-6)
    torch.testing.assert_close(to_standardized_float(images).double(), expected, rtol=1e-5, atol=1e-5)


def test_all_views_of_an_image_in_one_call_match_one_call_per_view():
    from cpembed.module._crops import crop_and_resize

    torch.manual_seed(0)
    images = torch.rand(3, 2, 20, 20)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, -0.1, 0.5, 0.4]])
    together = crop_and_resize(images, boxes.expand(3, 2, 4).contiguous(), 8)
    for view in range(2):
        separate = crop_and_resize(images, boxes[view].expand(3, 4), 8)
        torch.testing.assert_close(together[view * 3 : (view + 1) * 3], separate)  # view-major rows


def test_schedules_follow_msn():
    from cpembed.module import Schedule

    schedule = Schedule(total_steps=100, warmup_steps=10, start_lr=2e-4, lr=1e-3, final_lr=1e-6)
    assert schedule.learning_rate(0) == pytest.approx(2e-4)
    assert schedule.learning_rate(10) == pytest.approx(1e-3)
    assert schedule.learning_rate(100) == pytest.approx(1e-6)
    assert schedule.weight_decay_at(0) == pytest.approx(0.04)
    assert schedule.weight_decay_at(100) == pytest.approx(0.4)
    assert schedule.momentum_at(50) == pytest.approx(0.998)


@pytest.mark.slow
def test_speed_benchmark_runs_with_torch_alone(tmp_path, run_benchmark_torch_only):
    """The CWA-MSN speed script runs where only torch, numpy and h5py are installed, and reports every row."""
    out = tmp_path / "speed.json"
    args = ["--device", "cpu", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--image-size", "32"]
    args += ["--depth", "1", "--width", "32", "--n-images", "256", "--workers", "0", "--inference-batch", "2"]
    args += ["--profile", "--json-out", str(out)]
    result = run_benchmark_torch_only("cwamsn_speed.py", args)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in ("train_samples_per_s_baseline", "train_samples_per_s_pipeline", "inference_images_per_s"):
        assert report[key] > 0
    assert report["pipeline_alone_samples_per_s"] > 0
    assert report["profile_families_ms"]["matmul"] > 0


def tiny_msn(device="cpu"):
    torch.manual_seed(0)
    return MaskedSiameseNetwork(tiny_vit(), hidden_dim=16, out_dim=8, n_prototypes=10).to(device)


def copy_optimizer_state(source, source_params, target, target_params):
    """Give ``target``'s parameters the AdamW moments and step count of the matching ``source`` parameters."""
    for ours, theirs in zip(source_params, target_params, strict=True):
        target.state[theirs] = {key: value.clone() for key, value in source.state[ours].items()}


def reference_step(msn, optimizer, images, views, *, learning_rate, weight_decay, momentum):
    """One MSN step with torch's AdamW applying its own weight decay per group, the textbook way."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
        group["weight_decay"] = weight_decay if group["apply_weight_decay"] else 0.0
    loss = msn(*make_views(images, images, views))
    optimizer.zero_grad()
    loss.total.backward()
    torch.nn.utils.clip_grad_norm_(msn.parameters(), 3.0)
    optimizer.step()
    msn.update_target(momentum)
    return loss.total.detach()


# Each step below starts both sides from the same state. Over several steps they would drift apart: biases in front
# of a normalisation (the head's BatchNorm, the keys' softmax) get rounding noise for a gradient, and Adam turns any
# noise into a full-size step of either sign.


@pytest.mark.slow
def test_training_step_equals_adamw_with_per_group_weight_decay():
    """Device-tensor hyper-parameters and the separate decoupled decay give exactly torch's AdamW step."""
    views = ViewConfig(image_size=32, focal_size=16, n_focal_views=2)
    msn = tiny_msn()
    backward_losses = []

    def backward(loss):
        backward_losses.append(loss.detach())
        loss.backward()

    step = MSNTrainingStep(msn, views, backward=backward)
    generator = torch.Generator().manual_seed(1)
    for i, (learning_rate, weight_decay, momentum) in enumerate([(1e-3, 0.04, 0.996), (5e-4, 0.3, 0.999)] * 2):
        reference = copy.deepcopy(msn)
        optimizer = torch.optim.AdamW(parameter_groups(reference))
        reference_params = [p for group in optimizer.param_groups for p in group["params"]]
        copy_optimizer_state(step.optimizer, step.trained, optimizer, reference_params)
        images = torch.randint(0, 256, (4, 5, 40, 40), dtype=torch.uint8, generator=generator)
        settings = {"learning_rate": learning_rate, "weight_decay": weight_decay, "momentum": momentum}
        torch.manual_seed(100 + i)  # the same crops, flips and dropped patches for both
        loss = step(images, images, **settings)
        torch.manual_seed(100 + i)
        torch.testing.assert_close(loss, reference_step(reference, optimizer, images, views, **settings))
        for (name, ours), theirs in zip(msn.state_dict().items(), reference.state_dict().values(), strict=True):
            torch.testing.assert_close(ours, theirs, msg=name)
    assert int(step.optimizer.state[msn.prototypes]["step"]) == 4
    assert len(backward_losses) == 4  # every backward pass went through the given function (DDP's, in a plan)
    assert not torch.equal(msn.encoder.patch_embed.weight, tiny_msn().encoder.patch_embed.weight)


def test_cuda_graph_needs_a_cuda_device_and_an_eager_warm_up():
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        MSNTrainingStep(tiny_msn(), ViewConfig(32, 16, 2), cuda_graph=True)
    with pytest.raises(ValueError, match="at least one eager warm-up step"):
        MSNTrainingStep(tiny_msn(), ViewConfig(32, 16, 2), cuda_graph=True, warmup_steps=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replays_equal_eager_steps():
    """Captured once and replayed with new batches and hyper-parameters, the step computes what an eager step does."""
    views = ViewConfig(image_size=32, focal_size=16, n_focal_views=2)
    graphed_msn = tiny_msn("cuda")
    eager_msn = copy.deepcopy(graphed_msn)
    graphed = MSNTrainingStep(graphed_msn, views, warmup_steps=1)
    eager = MSNTrainingStep(eager_msn, views, cuda_graph=False)
    generator = torch.Generator(device="cuda").manual_seed(1)
    for i in range(5):
        eager_msn.load_state_dict(graphed_msn.state_dict())
        copy_optimizer_state(graphed.optimizer, graphed.trained, eager.optimizer, eager.trained)
        images = torch.randint(0, 256, (4, 5, 40, 40), dtype=torch.uint8, device="cuda", generator=generator)
        stats = torch.rand(4, 2, 5, device="cuda", generator=generator) + 0.5
        settings = {"learning_rate": 1e-3 / (i + 1), "weight_decay": 0.04 * (i + 1), "momentum": 0.99 + 0.002 * i}
        torch.manual_seed(100 + i)
        loss = graphed(images, images, anchor_stats=stats, target_stats=stats, **settings)
        torch.manual_seed(100 + i)
        expected = eager(images, images, anchor_stats=stats, target_stats=stats, **settings)
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
        for (name, ours), theirs in zip(graphed_msn.state_dict().items(), eager_msn.state_dict().values(), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=f"step {i}: {name}")
    assert graphed._graph is not None  # steps 2-5 were replays
