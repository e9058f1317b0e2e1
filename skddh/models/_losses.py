"""Losses for the torch regressors: the adaptive triplet loss for ordered targets.

The adaptive triplet loss follows Zheng et al., "Semi-Supervised Learning for Bone Mineral
Density Estimation in Hip X-ray Images", MICCAI 2021 (arXiv 2103.13482): embeddings of images
whose targets are close are pulled together, and those whose targets differ are pushed apart by
a margin that grows with the target difference. The paper does not print its formula in the
sources we have; the definition below is ours (see :func:`adaptive_triplet_loss`).

.. note::
   A patent application covers the method of Zheng et al. (US 2022/0309651 A1). Check its
   status before commercial use of this loss.

We write the loss ourselves: torch's ``TripletMarginLoss`` takes one fixed margin and explicit
triplets, while here every ordered triplet of a batch is used at once with a margin per
triplet, which is a few tensor operations on the batch's distance matrices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: ``import skddh`` stays fast
    import torch


def adaptive_triplet_loss(
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    *,
    margin: float = 0.5,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Adaptive-margin triplet loss over every ordered triplet of a batch.

    Embeddings are L2-normalised, :math:`z_i = e_i / \lVert e_i \rVert`, and compared by
    Euclidean distance :math:`D_{ij} = \lVert z_i - z_j \rVert` (so :math:`0 \le D \le 2`).
    Targets are compared by :math:`T_{ij} = \lVert y_i - y_j \rVert` (weighted Euclidean
    in the units given, standard units in our regressors). Every triplet (anchor a, positive p,
    negative n) whose positive is closer to the anchor in target than the negative,
    :math:`T_{ap} < T_{an}`, contributes

    .. math::

        \max\bigl(0,\; D_{ap} - D_{an} + m\,(T_{an} - T_{ap})\bigr),

    and the loss is the mean over those triplets (0 when a batch has none). The margin
    :math:`m\,(T_{an} - T_{ap})` grows with how much farther the negative's target is, which
    is what makes it adaptive: embedding distances are asked to be ordered like target
    distances, in proportion. This follows Zheng et al. (MICCAI 2021), whose exact formula is
    not in our sources; a patent application covers their method (US 2022/0309651 A1).

    Parameters
    ----------
    embeddings : Tensor of shape (n, d)
    targets : Tensor of shape (n,) or (n, k)
    margin : float, default=0.5
        Margin per unit of target difference, :math:`m`.
    weights : Tensor of shape (k,), default=None
        Weight of each target in :math:`T` (squared inside the norm); equal by default.

    Returns
    -------
    Tensor
        A scalar.

    Examples
    --------
    >>> import torch
    >>> from skddh.models import adaptive_triplet_loss
    >>> y = torch.tensor([0.0, 1.0, 2.0])
    >>> ordered = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    >>> shuffled = ordered[[0, 2, 1]]
    >>> bool(adaptive_triplet_loss(ordered, y) < adaptive_triplet_loss(shuffled, y))
    True
    """
    import torch
    import torch.nn.functional as F

    z = F.normalize(embeddings.float(), dim=1)
    y = targets.float().reshape(len(targets), -1)
    if weights is not None:
        y = y * weights.float().sqrt()
    n = len(z)
    # ||z_i - z_j||^2 = 2 - 2 z_i.z_j for unit vectors; the clamp keeps sqrt's gradient finite
    d = (2.0 - 2.0 * z @ z.T).clamp_min(1e-12).sqrt()
    t = torch.cdist(y, y)
    others = ~torch.eye(n, dtype=torch.bool, device=z.device)
    total = embeddings.sum() * 0.0
    count = 0
    # anchors in chunks: a batch holds n^3 triplets, kept to about 2^24 entries at a time
    step = max(1, (1 << 24) // max(n * n, 1))
    for lo in range(0, n, step):
        a = slice(lo, lo + step)
        gap = t[a, None, :] - t[a, :, None]  # [a, p, n] = T_an - T_ap
        valid = (gap > 0) & others[a, :, None] & others[a, None, :]
        hinge = F.relu(d[a, :, None] - d[a, None, :] + margin * gap)
        total = total + (hinge * valid).sum()
        count += int(valid.sum())
    return total / count if count else total
