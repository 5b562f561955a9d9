"""Several processes, one training run: PyTorch's own engine (torchrun, DistributedDataParallel).

A process started by torchrun finds RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in its
environment; `join` turns them into a process group (gloo on CPU, NCCL on CUDA) and says which
part of the work is this process's. Without them everything here is a no-op for one process, so
the training code reads the same either way. `launch` is `imgcls train --nproc N`: the same
command under `torch.distributed.run` on this machine, not a process pool of ours.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ImgclsError, UsageError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "IMGCLS_DIST_TIMEOUT_S"
# A collective waits this long for a stuck peer before the job fails. A dead peer ends the job at once
# (torchrun's agent stops the others); this bounds a live one that hangs. Long enough for one process to
# decode a large folder into the cache while the others wait at a barrier (~1,000 images/s per core).
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Ranks:
    """Which process this is among the job's `world_size` (and among those on its own machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """The one process that writes the run folder and logs."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """The one process per machine that fills the machine's decode cache."""
        return self.local_rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def from_environment() -> Ranks:
    """The ranks torchrun gave this process; one process when it was started otherwise."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    return Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])),
                 int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))


def join(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join torchrun's process group (once per process) and return this process's ranks and
    device: on CUDA, one GPU per process (cuda:LOCAL_RANK). Processes other than rank 0 log
    errors only, so a job prints each line once."""
    ranks = from_environment()
    if not ranks.active:
        return ranks, device
    if device.type == "cuda":
        if ranks.local_world_size > torch.cuda.device_count():
            raise UsageError(f"{ranks.local_world_size} processes on this machine but {torch.cuda.device_count()} "
                             "GPUs; start one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=_store(timeout), rank=ranks.rank,
                                world_size=ranks.world_size, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    if not ranks.is_main:
        logging.getLogger("imgcls").setLevel(logging.ERROR)
    return ranks, device


def _store(timeout: timedelta) -> dist.Store:
    """torchrun's key-value store, under a prefix of its own for each start of the processes: the
    store outlives processes that --max-restarts starts again, and without it the new processes
    read the addresses the dead ones published and cannot connect (measured: 2 of 3 restarts failed)."""
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", timeout=timeout))
    return dist.PrefixStore(f"imgcls/start-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()


@contextlib.contextmanager
def local_main_first(ranks: Ranks):
    """Run the block on each machine's first process, then on the others: the first fills the
    decode cache and the others map what it wrote (one decode per machine, not per process)."""
    if not ranks.is_local_main:
        barrier(ranks)
    yield
    if ranks.is_local_main:
        barrier(ranks)


def broadcast_object(value, ranks: Ranks):
    """Rank 0's `value`, on every process (for decisions that must agree: a run folder, a plan)."""
    if not ranks.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.active:
        dist.all_reduce(values)
    return values


def average_buffers(tensors: list[torch.Tensor], ranks: Ranks) -> None:
    """Make `tensors` (e.g. BatchNorm statistics each process measured on its own images) the
    mean over the processes, in place."""
    if not ranks.active:
        return
    for tensor in tensors:
        dist.all_reduce(tensor)
        tensor.div_(ranks.world_size)


def broadcast_tensors(tensors: list[torch.Tensor], ranks: Ranks) -> None:
    """Rank 0's values in `tensors`, in place, on every process."""
    if ranks.active:
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def shard_rows(count: int, ranks: Ranks) -> slice:
    """This process's contiguous block of `count` rows (blocks differ in size by one at most):
    a slice, so a memory-mapped array is cut without a copy."""
    return slice(ranks.rank * count // ranks.world_size, (ranks.rank + 1) * count // ranks.world_size)


def gather_rows(local: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Every process's `local` rows (its `shard_rows` block), put back together in rank order: the
    tensor one process computing every row would have, on every process."""
    if not ranks.active:
        return local
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    sizes = [torch.zeros((), dtype=torch.long, device=device) for _ in range(ranks.world_size)]
    dist.all_gather(sizes, torch.tensor(len(local), device=device))
    padded = local.new_zeros((int(max(sizes)), *local.shape[1:]), device=device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(ranks.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes)]).to(local.device)


def restarted() -> bool:
    """True in a process torchrun's elastic agent started again after a failure (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def launch(nproc: int, max_restarts: int, imgcls_argv: list[str], run_dir) -> None:
    """Run `imgcls IMGCLS_ARGV` as `nproc` processes on this machine through torch.distributed.run
    (torchrun --standalone); CPU threads are shared out between them. A process that fails ends
    the job: its own message is printed by it, and this raises one line saying which one."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise UsageError(f"--nproc must be 1 or more, got {nproc}")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # a failure is told below, in one line
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
                                         "--module", "imgcls", *imgcls_argv])
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        cause = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"
        raise ImgclsError(f"process {rank} of {nproc} failed ({cause}), so the job stopped; "
                          f"continue it with: imgcls train --resume {run_dir} --nproc {nproc}") from None
    finally:
        sys.stdout.flush()
