"""One process per GPU with torchrun: read its environment, set up torch.distributed, tear down.

torchrun (``python -m torch.distributed.run``) starts the processes and tells each one its
place in environment variables: ``RANK`` (0 .. WORLD_SIZE-1 over all nodes), ``WORLD_SIZE``
and ``LOCAL_RANK`` (0 .. nproc_per_node-1 on this node). :func:`launch` reads them, joins the
process group when there is more than one process (backend ``nccl`` for CUDA, ``gloo``
otherwise; the rendezvous address comes from torchrun's ``MASTER_ADDR``/``MASTER_PORT``), gives
each process its own GPU (``cuda:LOCAL_RANK``) and leaves the group on exit::

    with ddim.generation.distributed.launch("cuda") as proc:
        ddim.generation.generate.generate(model.to(proc.device), "out", 50_000, rank=proc.rank,
                               world_size=proc.world_size)

Without torchrun (no ``WORLD_SIZE``) it is one process of rank 0 and touches nothing.
This module launches nothing itself: torchrun does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Process:
    """Where this process stands: its global ``rank`` among ``world_size`` processes, its
    ``local_rank`` on this node and the ``device`` it should use (None: the caller's default)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None


def from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; (0, 1, 0) without them.

    Raises:
        ValueError: a variable is not an integer, or they contradict each other.
    """
    env = os.environ if environ is None else environ
    values = {}
    for name, default in zip(ENV_VARS, (0, 1, 0), strict=True):
        text = env.get(name, "").strip()
        try:
            values[name] = int(text) if text else default
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, got "
                             f"{text!r}") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
                         f"LOCAL_RANK={local} (need 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0)")
    return rank, world, local


def process_device(device: torch.device | str | None, world_size: int,
                   local_rank: int) -> torch.device | None:
    """The device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process).

    An explicit ``cuda:N`` is kept for a single process and refused for several, which would
    all share GPU N.
    """
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return device
    if device.index is not None:
        if world_size > 1:
            raise ValueError(f"device {device} names one GPU for all {world_size} processes; "
                             "pass device='cuda' (each process then uses cuda:LOCAL_RANK)")
        return device
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={local_rank} but this node has "
                         f"{torch.cuda.device_count()} CUDA devices: start at most that many "
                         "processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


@contextmanager
def launch(device: torch.device | str | None = None,
           environ: Mapping[str, str] | None = None) -> Iterator[Process]:
    """This process's :class:`Process`, in a process group while the block runs.

    The group is created only when WORLD_SIZE > 1 and none exists yet (then it is also
    destroyed on exit, error or not); ``nccl`` when the device is CUDA, else ``gloo``.
    """
    rank, world, local = from_env(environ)
    dev = process_device(device, world, local)
    created = False
    if world > 1 and not is_initialized():
        if not torch.distributed.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if dev is not None and dev.type == "cuda":
            torch.cuda.set_device(dev)
            torch.distributed.init_process_group("nccl", device_id=dev)
        else:
            torch.distributed.init_process_group("gloo")
        created = True
    try:
        yield Process(rank, world, local, dev)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for without one)."""
    if is_initialized():
        torch.distributed.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src``, on every process (picklable objects; itself without a group)."""
    if not is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` without a group); also a barrier."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
