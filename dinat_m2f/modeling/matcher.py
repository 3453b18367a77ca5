"""Hungarian matching of predicted queries to ground-truth masks, on randomly point-sampled masks."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import point_sample

__all__ = ["HungarianMatcher", "batch_dice_cost", "batch_sigmoid_ce_cost"]


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of every prediction (N, P) logits against every target (M, P) in {0, 1}: (N, M)."""
    inputs = inputs.sigmoid()
    numerator = 2 * torch.einsum("nc,mc->nm", inputs, targets)
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid cross-entropy of every prediction (N, P) against every target (M, P): (N, M)."""
    num_points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    cost = torch.einsum("nc,mc->nm", pos, targets) + torch.einsum("nc,mc->nm", neg, 1 - targets)
    return cost / num_points


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimizing
    cost_class * (-p(target class)) + cost_mask * sigmoid-BCE + cost_dice * dice,
    with the mask terms computed on ``num_points`` random points shared by all masks of an image."""

    def __init__(self, cost_class: float = 1, cost_mask: float = 1, cost_dice: float = 1, num_points: int = 0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K+1) and "pred_masks" (B, Q, H, W).
            targets: per image, "labels" (M,) and "masks" (M, H', W').
        Returns:
            per image, (query indices, target indices), int64, of length min(Q, M).
        """
        indices = []
        # The costs are computed in float32, also under autocast.
        with torch.autocast(device_type=outputs["pred_logits"].device.type, enabled=False):
            for b, target in enumerate(targets):
                out_prob = outputs["pred_logits"][b].float().softmax(-1)
                cost_class = -out_prob[:, target["labels"]]

                out_mask = outputs["pred_masks"][b].float()[:, None]
                tgt_mask = target["masks"].to(out_mask)[:, None]
                point_coords = torch.rand(1, self.num_points, 2, device=out_mask.device)
                tgt_mask = point_sample(
                    tgt_mask, point_coords.repeat(tgt_mask.shape[0], 1, 1), align_corners=False
                ).squeeze(1)
                out_mask = point_sample(
                    out_mask, point_coords.repeat(out_mask.shape[0], 1, 1), align_corners=False
                ).squeeze(1)

                cost = (
                    self.cost_mask * batch_sigmoid_ce_cost(out_mask, tgt_mask)
                    + self.cost_class * cost_class
                    + self.cost_dice * batch_dice_cost(out_mask, tgt_mask)
                )
                if not torch.isfinite(cost).all():
                    # scipy would fail with a bare ValueError; the trainer adds the iteration to this error.
                    raise FloatingPointError("matching cost is NaN or infinite: the predictions are not finite")
                rows, cols = linear_sum_assignment(cost.cpu())
                indices.append(
                    (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
                )
        return indices
