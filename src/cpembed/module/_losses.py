"""Training objectives of CellPainTR: channel-wise masked morphology (CWMM) and supervised contrastive learning.

CWMM (paper Sec. 3.2, Appendix A.1): features are grouped by channel x compartment; a fraction of the groups is
masked, only non-zero values are masked (a true zero cannot be told from a missing one), and the loss is the mean
squared error per group averaged over groups (Eq. 9). The public reference instead masks features independently
and takes one global MSE over masked features; that behaviour is kept for ``feature_groups=None``.

Supervised contrastive loss: Khosla et al., 2020, "Supervised Contrastive Learning", the ``L_out`` form (paper
Eq. 11) on L2-normalised CLS embeddings with temperature 0.07 (the paper's and Khosla's default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_sample(mask_ratio: float | torch.Tensor, n_samples: int, device: torch.device) -> torch.Tensor:
    ratio = torch.as_tensor(mask_ratio, dtype=torch.float32, device=device)
    if ratio.ndim == 0:
        ratio = ratio.expand(n_samples)
    if ratio.shape != (n_samples,):
        raise ValueError(f"`mask_ratio` must be a float or a tensor of shape ({n_samples},), got {tuple(ratio.shape)}.")
    if bool(((ratio < 0) | (ratio > 1)).any()):
        raise ValueError("`mask_ratio` must lie in [0, 1].")
    return ratio


def _check_groups(feature_groups: torch.Tensor, n_features: int) -> None:
    if feature_groups.shape != (n_features,):
        raise ValueError(f"`feature_groups` must have shape ({n_features},), got {tuple(feature_groups.shape)}.")
    if feature_groups.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"`feature_groups` must hold integer group ids, got dtype {feature_groups.dtype}.")


def sample_feature_mask(
    x: torch.Tensor,
    mask_ratio: float | torch.Tensor,
    feature_groups: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw the features to mask for channel-wise masked morphology.

    With ``feature_groups``, each group of each sample is masked with probability ``mask_ratio`` as a whole (the
    paper's channel-wise masking); with ``None``, each feature is masked independently with that probability (the
    reference's behaviour). Zero values are never masked.

    Parameters
    ----------
    x
        Feature values, ``(batch, n_features)``.
    mask_ratio
        Masking probability, one for the batch or one per sample (``(batch,)``). CellPainTR draws it from
        ``U(0.05, 0.4)`` for every batch.
    feature_groups
        Group id (``0..G-1``) of every feature, ``(n_features,)``, or ``None``.
    generator
        Random generator on the device of ``x``, for reproducible masks.

    Returns
    -------
    Boolean mask of shape ``(batch, n_features)``, ``True`` where a feature is masked.
    """
    n_samples, n_features = x.shape
    ratio = _per_sample(mask_ratio, n_samples, x.device)[:, None]
    if feature_groups is None:
        drawn = torch.rand(n_samples, n_features, generator=generator, device=x.device) < ratio
    else:
        _check_groups(feature_groups, n_features)
        n_groups = int(feature_groups.max()) + 1
        masked_groups = torch.rand(n_samples, n_groups, generator=generator, device=x.device) < ratio
        drawn = masked_groups[:, feature_groups.to(x.device)]
    return drawn & (x != 0)


def masked_feature_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    feature_groups: torch.Tensor | None,
    n_groups: int | None = None,
) -> torch.Tensor:
    """Mean squared error on masked features, per group and averaged over groups (paper Eq. 9).

    ``loss = mean over groups g with masked features of (sum of squared errors over masked (sample, feature) of g) /
    (number of masked (sample, feature) of g)``. With ``feature_groups=None`` it is one MSE over all masked entries
    (the reference's loss). Without any masked entry the loss is zero (and still part of the graph).

    Parameters
    ----------
    reconstruction
        Predicted values, ``(batch, n_features)``.
    target
        True values, ``(batch, n_features)``.
    mask
        Boolean mask from :func:`sample_feature_mask`.
    feature_groups
        Group id of every feature, or ``None``.
    n_groups
        Number of groups; by default ``max(feature_groups) + 1`` (pass it to avoid a device synchronisation).

    Returns
    -------
    Scalar float32 tensor.
    """
    if not (reconstruction.shape == target.shape == mask.shape):
        raise ValueError(
            f"`reconstruction`, `target` and `mask` must have one shape, got {tuple(reconstruction.shape)}, "
            f"{tuple(target.shape)} and {tuple(mask.shape)}."
        )
    weight = mask.to(torch.float32)
    squared_error = (reconstruction.float() - target.float()).square() * weight
    if feature_groups is None:
        return squared_error.sum() / weight.sum().clamp_min(1.0)
    _check_groups(feature_groups, mask.shape[1])
    n_groups = int(feature_groups.max()) + 1 if n_groups is None else n_groups
    groups = feature_groups.to(mask.device)
    error_per_group = squared_error.new_zeros(n_groups).index_add(0, groups, squared_error.sum(dim=0))
    count_per_group = weight.new_zeros(n_groups).index_add(0, groups, weight.sum(dim=0))
    present = count_per_group > 0
    group_mse = torch.where(present, error_per_group / count_per_group.clamp_min(1.0), 0.0)
    return group_mse.sum() / present.sum().clamp_min(1)


def _check_labelled_embedding(
    embedding: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None
) -> None:
    if embedding.ndim != 2 or labels.shape != (embedding.shape[0],):
        raise ValueError(
            f"Expected `embedding` (batch, dim) and `labels` (batch,), got {tuple(embedding.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if groups is not None and groups.shape != labels.shape:
        raise ValueError(f"Expected `groups` of shape {tuple(labels.shape)}, got {tuple(groups.shape)}.")


def supervised_contrastive_loss(
    embedding: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020, ``L_out``) on L2-normalised embeddings.

    For anchor ``i`` with positives ``P(i)`` (other samples with its label) and all other samples ``A(i)``::

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / T) / sum_{a in A(i)} exp(z_i . z_a / T) )

    The loss is the mean of ``l_i`` over anchors with at least one positive (anchors without positives carry no
    signal and are excluded); zero, still in the graph, when no anchor has a positive.

    Parameters
    ----------
    embedding
        Embeddings, ``(batch, dim)``; normalised here.
    labels
        Integer label per sample, ``(batch,)``; equal labels are positives (e.g. the compound).
    temperature
        Softmax temperature ``T``.

    Returns
    -------
    Scalar float32 tensor.
    """
    _check_labelled_embedding(embedding, labels)
    z = F.normalize(embedding.float(), dim=1)
    self_pair = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    with torch.autocast(device_type=z.device.type, enabled=False):  # similarities in float32 under autocast
        similarity = z @ z.T
    # The lowest finite value rather than -inf keeps the gradient finite when a batch holds a single sample.
    logits = (similarity / temperature).masked_fill(self_pair, torch.finfo(z.dtype).min)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_pair
    n_positive = positive.sum(dim=1)
    mean_log_prob = torch.where(positive, log_prob, 0.0).sum(dim=1) / n_positive.clamp_min(1)
    has_positive = n_positive > 0
    return -(mean_log_prob * has_positive).sum() / has_positive.sum().clamp_min(1)


def replicate_alignment_loss(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    scale: torch.Tensor | float,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared distance of replicates to the centroid of their label in the minibatch, over ``scale``.

    Without ``groups`` the replicates are wells: each well of a label with at least two wells is pulled to the
    label's centroid. With ``groups`` (e.g. the source of each well) the replicates are the groups' centroids of a
    label: only labels present in at least two groups count, and each group's centroid is pulled to the mean of
    the label's group centroids. This aligns a compound across sources and leaves its spread within a source alone.
    Unlike a contrastive loss it pushes no two labels apart (compounds of one mechanism may stay close). Zero, still
    in the graph, when nothing repeats.

    Parameters
    ----------
    embedding
        Embeddings, ``(batch, dim)``.
    labels
        Integer label per sample, ``(batch,)``; negative labels (unlabelled wells) are ignored.
    scale
        Squared distance that counts as 1 (e.g. the mean squared norm of the embeddings of the training data).
    groups
        Integer group per sample, ``(batch,)``, or ``None``.

    Returns
    -------
    Scalar float32 tensor.
    """
    _check_labelled_embedding(embedding, labels, groups)
    labelled = labels >= 0
    z, labels = embedding.float()[labelled], labels[labelled]
    if groups is None:
        return _spread_around_centroids(z, labels) / scale
    _, cells, cell_sizes = torch.unique(
        torch.stack([labels, groups[labelled]], dim=1), dim=0, return_inverse=True, return_counts=True
    )
    cell_centroids = z.new_zeros(len(cell_sizes), z.shape[1]).index_add(0, cells, z) / cell_sizes[:, None]
    cell_labels = labels.new_empty(len(cell_sizes)).scatter_(0, cells, labels)
    return _spread_around_centroids(cell_centroids, cell_labels) / scale


def _spread_around_centroids(points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the points of repeated labels to their label's centroid (0 when none repeats)."""
    _, codes, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    centroids = points.new_zeros(len(counts), points.shape[1]).index_add(0, codes, points) / counts[:, None]
    repeated = (counts[codes] > 1).to(points.dtype)
    squared_distance = (points - centroids[codes]).square().sum(dim=1)
    return (squared_distance * repeated).sum() / repeated.sum().clamp_min(1)


def distribution_alignment_loss(
    embedding: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Energy distance between each group's wells of a label and the label's wells in the other groups.

    Where :func:`replicate_alignment_loss` with ``groups`` matches a label's group centroids, this matches the whole
    distributions: the energy distance (Szekely & Rizzo, 2013) ``2 E|x - y| - E|x - x'| - E|y - y'|`` between the
    wells ``x`` of one group (a source) and the wells ``y`` of the same label in the other groups is zero only when
    both come from the same distribution. For the negative controls, which every source has, this asks a source's
    controls to be spread as the other sources' controls are, not only centred alike. Averaged over the (label,
    group) pairs of labels present in at least two groups; pairs of wells of one group compare with themselves as
    the V-statistic does.

    Parameters
    ----------
    embedding
        Embeddings, ``(batch, dim)``.
    labels
        Integer label per sample, ``(batch,)``; negative labels (unlabelled wells) are ignored.
    groups
        Integer group per sample (e.g. the source), ``(batch,)``.
    scale
        Squared distance that counts as 1, as in :func:`replicate_alignment_loss`; distances are divided by its
        square root.

    Returns
    -------
    Scalar float32 tensor; zero, still in the graph, when no label is present in two groups.
    """
    _check_labelled_embedding(embedding, labels, groups)
    labelled = labels >= 0
    z, labels, groups = embedding.float()[labelled], labels[labelled], groups[labelled]
    squared = (z[:, None, :] - z[None, :, :]).square().sum(dim=-1)
    apart = squared > 0
    # The square root of a zero is replaced before it is taken, so that identical wells get a zero gradient, not NaN.
    distance = torch.where(apart, squared, 1.0).sqrt() * apart / float(scale) ** 0.5
    total, n_pairs = 0.0 * z.sum(), 0  # zero, still in the graph, when no label spans two groups
    for label in torch.unique(labels):
        of_label = labels == label
        label_groups = groups[of_label]
        if len(torch.unique(label_groups)) < 2:
            continue
        within = distance[of_label][:, of_label]
        for group in torch.unique(label_groups):
            inside = (label_groups == group).float()
            outside = 1.0 - inside
            total = total + (
                2 * _weighted_mean(within, inside, outside)
                - _weighted_mean(within, inside, inside)
                - _weighted_mean(within, outside, outside)
            )
            n_pairs += 1
    return total / max(n_pairs, 1)


def _weighted_mean(matrix: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Mean of ``matrix`` over the rows and columns whose indicator is 1."""
    return (rows @ matrix @ columns) / (rows.sum() * columns.sum())


def similarity_structure_loss(embedding: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the cosine similarities of every pair of samples in two representations.

    Keeps which samples are alike in ``reference`` (e.g. a PCA of the profiles, whose neighbourhoods hold the
    biology) alike in ``embedding``, while another objective reshapes it; scale-free in both.

    Parameters
    ----------
    embedding
        Embeddings, ``(batch, dim)``.
    reference
        The reference representation of the same samples, ``(batch, dim_reference)``; no gradient flows into it.

    Returns
    -------
    Scalar float32 tensor: the mean over ordered pairs ``i != j`` of ``(cos(e_i, e_j) - cos(r_i, r_j))^2``; zero for
    a single sample.
    """
    if embedding.ndim != 2 or reference.ndim != 2 or embedding.shape[0] != reference.shape[0]:
        raise ValueError(
            f"Expected `embedding` and `reference` with one row per sample, got {tuple(embedding.shape)} and "
            f"{tuple(reference.shape)}."
        )
    with torch.autocast(device_type=embedding.device.type, enabled=False):
        z = F.normalize(embedding.float(), dim=1)
        r = F.normalize(reference.detach().float(), dim=1)
        difference = z @ z.T - r @ r.T
    n = z.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    return difference.square().masked_select(off_diagonal).sum() / max(n * (n - 1), 1)
