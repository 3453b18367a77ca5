"""Mask2Former's set criterion: classification and point-sampled mask losses of matched queries,
with deep supervision on every decoder prediction."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils.comm import get_world_size
from torch import nn

from .matcher import HungarianMatcher
from .point_sampling import calculate_uncertainty, get_uncertain_point_coords_with_randomness, point_sample

__all__ = ["SetCriterion", "dice_loss", "sigmoid_ce_loss"]

Targets = List[Dict[str, torch.Tensor]]  # per image: "labels" (M,), "masks" (M, H, W)
Indices = List[Tuple[torch.Tensor, torch.Tensor]]  # per image: (query indices, target indices)


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss of (N, P) logits against (N, P) targets, summed over masks and divided by num_masks."""
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Per-mask mean sigmoid cross-entropy, summed over masks and divided by num_masks."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


class SetCriterion(nn.Module):
    """Matches predictions to targets with ``matcher``, then computes "labels" (loss_ce) and "masks"
    (loss_mask, loss_dice) losses; auxiliary predictions give the same losses suffixed _0, _1, ..."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: List[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
    ):
        """
        Args:
            num_classes: number of classes, without the no-object class (which gets index num_classes).
            weight_dict: loss name -> weight (applied by the meta-architecture).
            eos_coef: cross-entropy weight of the no-object class.
            losses: which of "labels", "masks" to compute.
            num_points, oversample_ratio, importance_sample_ratio: uncertainty point sampling of the mask losses.
        """
        super().__init__()
        unknown = [loss for loss in losses if loss not in ("labels", "masks")]
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {unknown}; known: ['labels', 'masks']")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = losses
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # Persistent: the released checkpoints contain criterion.empty_weight.
        self.register_buffer("empty_weight", empty_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def loss_labels(
        self, outputs: dict, targets: Targets, indices: Indices, num_masks: float
    ) -> Dict[str, torch.Tensor]:
        src_logits = outputs["pred_logits"].float()
        batch_idx, src_idx = self._src_permutation_idx(indices)
        target_classes = torch.full(
            src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device
        )
        target_classes[batch_idx, src_idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss_ce}

    def loss_masks(
        self, outputs: dict, targets: Targets, indices: Indices, num_masks: float
    ) -> Dict[str, torch.Tensor]:
        batch_idx, src_idx = self._src_permutation_idx(indices)
        src_masks = outputs["pred_masks"][batch_idx, src_idx].float()[:, None]
        # Targets of one batch share the padded image size (see MaskFormer.prepare_targets).
        target_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(src_masks)[:, None]

        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                src_masks, calculate_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_labels = point_sample(target_masks, point_coords, align_corners=False).squeeze(1)
        point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    @staticmethod
    def _src_permutation_idx(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def get_loss(
        self, loss: str, outputs: dict, targets: Targets, indices: Indices, num_masks: float
    ) -> Dict[str, torch.Tensor]:
        return {"labels": self.loss_labels, "masks": self.loss_masks}[loss](outputs, targets, indices, num_masks)

    def forward(self, outputs: dict, targets: Targets) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: the head's output dict (pred_logits, pred_masks, aux_outputs).
            targets: per image, "labels" (M,) int64 and "masks" (M, H, W).
        Returns:
            unweighted losses.
        """
        # Losses are computed in float32, also under autocast.
        with torch.autocast(device_type=outputs["pred_logits"].device.type, enabled=False):
            outputs_without_aux = {k: v for k, v in outputs.items() if k != "aux_outputs"}
            indices = self.matcher(outputs_without_aux, targets)

            # Normalize by the average number of target masks over all workers.
            num_masks = torch.as_tensor(
                [float(sum(len(t["labels"]) for t in targets))], device=outputs["pred_logits"].device
            )
            if get_world_size() > 1:
                torch.distributed.all_reduce(num_masks)
            num_masks = torch.clamp(num_masks / get_world_size(), min=1).item()

            losses = {}
            for loss in self.losses:
                losses.update(self.get_loss(loss, outputs, targets, indices, num_masks))
            for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
                indices = self.matcher(aux_outputs, targets)
                for loss in self.losses:
                    aux_losses = self.get_loss(loss, aux_outputs, targets, indices, num_masks)
                    losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses
