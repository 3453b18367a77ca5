"""Point sampling of mask logits (PointRend), used by the matcher and the losses to avoid full-size masks."""
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["point_sample", "get_uncertain_point_coords_with_randomness", "calculate_uncertainty"]


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Bilinearly sample ``input`` (N, C, H, W) at ``point_coords`` (N, P, 2) or (N, Hp, Wp, 2), given as
    (x, y) in [0, 1] x [0, 1]. Returns (N, C, P) or (N, C, Hp, Wp). kwargs go to ``F.grid_sample``."""
    add_dim = point_coords.dim() == 3
    if add_dim:
        point_coords = point_coords.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * point_coords - 1.0, **kwargs)
    return output.squeeze(3) if add_dim else output


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of binary mask logits: -|logit| (highest at the decision boundary)."""
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Pick ``num_points`` points per mask: the ``importance_sample_ratio`` most uncertain of
    ``oversample_ratio * num_points`` random points, the rest uniformly at random.

    Args:
        coarse_logits: (N, 1, H, W) mask logits.
        uncertainty_func: maps (N, 1, P) sampled logits to (N, 1, P) uncertainties.
    Returns:
        (N, num_points, 2) coordinates in [0, 1] x [0, 1].
    """
    if oversample_ratio < 1:
        raise ValueError(f"OVERSAMPLE_RATIO must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"IMPORTANCE_SAMPLE_RATIO must be in [0, 1], got {importance_sample_ratio}")
    num_masks = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    point_coords = torch.rand(num_masks, num_sampled, 2, device=coarse_logits.device)
    point_logits = point_sample(coarse_logits, point_coords, align_corners=False)
    point_uncertainties = uncertainty_func(point_logits)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
    shift = num_sampled * torch.arange(num_masks, dtype=torch.long, device=coarse_logits.device)
    idx = idx + shift[:, None]
    point_coords = point_coords.view(-1, 2)[idx.view(-1), :].view(num_masks, num_uncertain, 2)
    if num_random > 0:
        point_coords = torch.cat(
            [point_coords, torch.rand(num_masks, num_random, 2, device=coarse_logits.device)], dim=1
        )
    return point_coords
