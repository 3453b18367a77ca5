"""What an exact resume needs besides the weights, optimizer, scheduler and iteration that detectron2
checkpoints: each rank's data position (:class:`dinat_m2f.data.ResumableTrainLoader`) and random states.

:class:`ResumeStateHook` collects them on every rank right before a checkpoint is written (the iterations
at which detectron2's PeriodicCheckpointer saves) and hands them to the checkpoint through detectron2's hook
state ("trainer" -> "hooks" -> "ResumeStateHook", one entry per rank). On --resume each rank continues with
its own entry, so the run ends with the weights the uninterrupted run would have (bit for bit on the same
hardware and thread count). Randomness inside data workers needs no state: each sample's augmentation is
seeded from its position in the data stream.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

from .rng import capture_rng_states, restore_rng_states

__all__ = ["ResumeStateHook"]

logger = logging.getLogger(__name__)


class ResumeStateHook(HookBase):
    """Place it before the PeriodicCheckpointer (and any hook that draws random numbers) on every rank.

    Args:
        checkpoint_period: SOLVER.CHECKPOINT_PERIOD; states are collected when the checkpointer saves:
            after iterations ``period - 1, 2 * period - 1, ...`` and the last one.
    """

    def __init__(self, checkpoint_period: int):
        self.checkpoint_period = checkpoint_period
        self.restored = False
        self._states: Optional[List[Dict[str, Any]]] = None

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if (iteration + 1) % self.checkpoint_period == 0 or iteration >= self.trainer.max_iter - 1:
            local = {"data": self.trainer.data_loader.state_dict(), "rng": capture_rng_states()}
            self._states = comm.all_gather(local)  # a collective: every rank runs this hook

    def state_dict(self) -> Dict[str, Any]:
        return {"ranks": self._states} if self._states is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        ranks, rank, world_size = state["ranks"], comm.get_rank(), comm.get_world_size()
        if len(ranks) == world_size:
            self.trainer.data_loader.load_state_dict(ranks[rank]["data"])
            restore_rng_states(ranks[rank]["rng"])
            logger.info("Resuming the data stream at position %d and the random states of rank %d",
                        ranks[rank]["data"]["position"], rank)
        else:
            # Another number of processes splits the stream differently: continue after the samples all ranks
            # consumed together, with fresh random states.
            consumed = sum(r["data"]["position"] for r in ranks)
            logger.warning(
                "The checkpoint was written by %d processes, this run has %d: the data stream continues after the "
                "%d samples seen so far, but random states are not restored, so the run is not an exact "
                "continuation", len(ranks), world_size, consumed,
            )
            waiting: List[List[int]] = [[] for _ in ranks[0]["data"]["waiting"]]
            self.trainer.data_loader.load_state_dict(
                {"seed": ranks[0]["data"]["seed"], "position": consumed // world_size, "waiting": waiting}
            )
        self.restored = True
