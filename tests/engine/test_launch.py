"""dinat_m2f.engine.launch: a frozen (not dead) peer stops the other processes after the timeout given to
launch (train_net.py's --dist-timeout), instead of detectron2's fixed 30 minutes. Two CPU processes, gloo."""
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from dinat_m2f.engine import launch

TIMEOUT_SECONDS = 10  # also bounds joining the group: generous for two processes starting on a loaded machine


def barrier_while_rank_1_freezes():
    if dist.get_rank() == 1:
        time.sleep(600)  # alive, but never reaches the barrier
    dist.barrier()


def test_a_frozen_peer_stops_the_others_after_the_timeout():
    start = time.monotonic()
    with pytest.raises(Exception, match=f"Timed out waiting {TIMEOUT_SECONDS * 1000}ms"):
        launch(barrier_while_rank_1_freezes, 2, dist_url="auto", use_cuda=False,
               timeout=timedelta(seconds=TIMEOUT_SECONDS))
    assert time.monotonic() - start < 300  # process start-up included; the sleeping peer was stopped, not waited for
