"""Multi-process launch and DDP wrapping that also work on CPU, and under torchrun.

detectron2's ``launch`` picks NCCL whenever CUDA is available and asserts one GPU per process, and its
``create_ddp_model`` always passes ``device_ids``, which DDP rejects for a CPU model. Here the backend follows
the device the model will run on: NCCL for CUDA, gloo for CPU (several CPU processes per machine are fine).

Processes are either started here (:func:`launch`, ``--num-gpus``) or by torchrun / SLURM / Kubernetes, which
set RANK, WORLD_SIZE, LOCAL_RANK (and LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
:func:`launch_from_environment`. Either way a collective that waits longer than ``timeout`` for a frozen
peer raises in the processes still running, which stops the job.
"""
from __future__ import annotations

import logging
import os
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


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def started_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or a launcher that sets the same variables)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def launches_rank_zero(machine_rank: int) -> bool:
    """Whether this process is global rank 0 (under torchrun) or starts it (``launch`` on machine 0)."""
    return int(os.environ["RANK"]) == 0 if started_by_torchrun() else machine_rank == 0


def launch_from_environment(
    main_func: Callable[..., Any], args: Sequence[Any] = (), use_cuda: bool = True, timeout: timedelta = DEFAULT_TIMEOUT
) -> None:
    """Run ``main_func(*args)`` in this process, one of the WORLD_SIZE processes started by torchrun: joins
    the process group at MASTER_ADDR:MASTER_PORT ("env://") as RANK, with LOCAL_RANK's GPU."""
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size == 1:
        main_func(*args)
        return
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    _run_in_process_group(
        main_func, args, "env://", world_size, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]),
        local_world_size, use_cuda, timeout,
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
    _run_in_process_group(
        main_func, args, dist_url, world_size, global_rank, local_rank, num_processes_per_machine, use_cuda, timeout
    )


def _run_in_process_group(
    main_func: Callable[..., Any],
    args: Sequence[Any],
    init_method: str,
    world_size: int,
    rank: int,
    local_rank: int,
    local_world_size: int,
    use_cuda: bool,
    timeout: timedelta,
) -> None:
    try:
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("Could not join the process group at %s", init_method)
        raise
    comm.create_local_process_group(local_world_size)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:
        # The processes share the machine's cores: split them instead of oversubscribing.
        torch.set_num_threads(max(1, torch.get_num_threads() // local_world_size))
    comm.synchronize()
    main_func(*args)


def process_group_timeout() -> timedelta:
    """The timeout of the default process group's collectives (what init_process_group was given)."""
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    return dist.group.WORLD._get_backend(device).options._timeout


def create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """Wrap ``model`` in DistributedDataParallel when there are several processes (device_ids only on GPU)."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **kwargs)
