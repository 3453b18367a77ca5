"""Multi-process launch and DDP wrapping that also work on CPU.

detectron2's ``launch`` picks NCCL whenever CUDA is available and asserts one GPU per process, and its
``create_ddp_model`` always passes ``device_ids``, which DDP rejects for a CPU model. Here the backend follows
the device the model will run on: NCCL for CUDA, gloo for CPU (several CPU processes per machine are fine).
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def launch(
    main_func: Callable[..., Any],
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    use_cuda: bool = True,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on each machine.

    With ``use_cuda`` each process drives one GPU over NCCL; otherwise processes communicate over gloo and
    share the machine's CPU threads. ``dist_url`` "auto" picks a free local port (single machine only).
    """
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if use_cuda and num_processes_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_processes_per_machine} asks for more GPUs than this machine has "
            f"({torch.cuda.device_count()}); use MODEL.DEVICE cpu for CPU processes"
        )
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _distributed_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, use_cuda, timeout),
        daemon=False,
    )


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_processes_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence[Any],
    use_cuda: bool,
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("Could not join the process group at %s", dist_url)
        raise
    comm.create_local_process_group(num_processes_per_machine)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:
        # The processes share the machine's cores: split them instead of oversubscribing.
        torch.set_num_threads(max(1, torch.get_num_threads() // num_processes_per_machine))
    comm.synchronize()
    main_func(*args)


def create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """Wrap ``model`` in DistributedDataParallel when there are several processes (device_ids only on GPU)."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **kwargs)
