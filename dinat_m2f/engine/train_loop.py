"""The training step: optional mixed precision (bfloat16 or float16, on CUDA and CPU) and a finite-loss check.

detectron2's AMPTrainer asserts CUDA and always uses a GradScaler; DiNAT-L trains in bfloat16, which needs
no scaler, and the synthetic configs train on CPU. This step:
  - runs the forward pass under ``torch.autocast(device_type, dtype)`` when a precision is given;
  - stops with ``FloatingPointError`` naming the iteration when the loss is NaN or infinite (or when the
    model raises FloatingPointError itself, as the matcher does for non-finite predictions), *before*
    backward and the optimizer step, so the weights (and any checkpoint written later by a hook) are
    never touched by a non-finite loss; checkpoints already on disk stay as they are;
  - scales the loss with a GradScaler only for float16 (bfloat16 has float32's exponent range).
"""
from __future__ import annotations

import logging
import time
from typing import Dict, Mapping, Optional

import torch
from detectron2.engine import SimpleTrainer

logger = logging.getLogger(__name__)

PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(amp_enabled: bool, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of SOLVER.AMP.ENABLED / SOLVER.AMP.PRECISION, None when AMP is off."""
    if not amp_enabled:
        return None
    if precision not in PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def check_finite_losses(loss_dict: Mapping[str, torch.Tensor], total: torch.Tensor, iteration: int) -> None:
    """Raise FloatingPointError naming the iteration (and the losses) when ``total`` is NaN or infinite."""
    if torch.isfinite(total).all():
        return
    losses = {name: float(value.detach().float()) for name, value in loss_dict.items()}
    raise FloatingPointError(
        f"Loss became infinite or NaN at iteration={iteration}; training stopped before the optimizer "
        f"step, checkpoints already written are unchanged. Losses: {losses}"
    )


class MixedPrecisionTrainer(SimpleTrainer):
    """SimpleTrainer whose step supports autocast on any device (see the module docstring).

    Args:
        model, data_loader, optimizer: as for SimpleTrainer.
        device_type: "cuda" or "cpu", the device the model runs on (for autocast and the GradScaler).
        precision: autocast dtype (torch.bfloat16 or torch.float16), or None for full precision.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        device_type: str = "cpu",
        precision: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__(model, data_loader, optimizer)
        if precision not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"precision must be None, torch.bfloat16 or torch.float16, got {precision}")
        self.device_type = device_type
        self.precision = precision
        # float16 overflows/underflows without loss scaling; bfloat16 does not.
        self.grad_scaler = torch.amp.GradScaler(device_type) if precision == torch.float16 else None
        if precision is not None:
            logger.info(
                "Mixed precision: autocast to %s on %s, %s",
                precision, device_type, "with a GradScaler" if self.grad_scaler else "no GradScaler",
            )

    def run_step(self) -> None:
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        try:
            with torch.autocast(self.device_type, dtype=self.precision, enabled=self.precision is not None):
                loss_dict = self.model(data)
        except FloatingPointError as error:  # raised inside the model, e.g. by the matcher on NaN predictions
            raise FloatingPointError(f"Non-finite values at iteration={self.iter}: {error}") from error
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss.float() for loss in loss_dict.values())
        check_finite_losses(loss_dict, losses, self.iter)

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)

        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self) -> Dict:
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Dict) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
