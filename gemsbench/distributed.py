"""Data parallelism inside one run: N processes (started by ``torchrun``), each taking a disjoint shard of every
global batch, whose gradients are summed across processes before every optimizer step.

Why not torch's ``DistributedDataParallel``: its reducer all-reduces ``p.grad`` once, during one backward pass.
The task-gradient methods take several backward passes per step (timeline format) or split one pass's rows by
task through hooks (:class:`gems.TaskSplit`), and want both task gradients, not only the joint one. The loop
(:mod:`gemsbench.train`) therefore reduces explicitly, which gives the 1-process step exactly (up to the order
of float additions) for every method:

1. the step's per-task target counts are summed across processes first, and every process weights its losses by
   these GLOBAL counts, so its gradients are its shard's terms of the 1-process gradient — also when its shard
   holds no example of a task;
2. the gradients (the joint one, or both task gradients, from which the joint one is then formed) and the loss
   sums are summed across processes (:meth:`Reducer.sum_`, in buckets);
3. every process then holds the same gradients and the same optimizer state, so clipping, SVD bases, gates and
   PCGrad's projections are computed identically on every process — no broadcast of bases is needed;
   :meth:`Reducer.check_same` confirms at every validation that the processes have not drifted apart.

Full gradients are reduced, not only their projections onto the GEMS/GaLore subspaces: a projection is linear,
but the clipping norm and the heuristic gate's gradient norms are norms of the *summed* gradients, which per
process projections or norms cannot give. ``allreduce_bytes`` in the training log counts what was sent.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

#: tensors are summed in flat buckets of at most this size (fewer, larger messages; bounded extra memory)
BUCKET_BYTES = 32 * 2 ** 20


class DistributedError(RuntimeError):
    """The processes of one run disagree or cannot be set up; the message says why and what to change."""


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (rank 0 writes every file)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> World:
    """The world ``torchrun`` (or ``srun`` + ``torchrun``) started this process in, from its environment
    variables; one process of one when it was started plainly."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def under_launcher() -> bool:
    """True in a process that ``torchrun`` started (it sets ``LOCAL_RANK``), whatever the world size."""
    return "LOCAL_RANK" in os.environ


#: the module every training process runs
TRAINER = "gemsbench.cli.train"


def launch_command(processes: int, nodes: int, argv: Sequence[str], python: str,
                   slurm: tuple[str, str] | None = None) -> list[str]:
    """The command that starts one run's ``processes`` × ``nodes`` trainer processes, each given ``argv``.

    One node: ``python -m torch.distributed.run --standalone`` (torchrun). Several nodes (SLURM): ``srun`` starts
    one torchrun per node of the allocation, which meet at its first node (c10d rendezvous); ``slurm`` is
    (job id, first host). ``--`` ends torchrun's options: it would read the trainer's ``--run`` as its own
    ``--run-path``."""
    if processes < 1 or nodes < 1:
        raise DistributedError(f"processes ({processes}) and nodes ({nodes}) must be at least 1")
    torchrun = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    trainer = ["-m", TRAINER, "--", *argv]
    if nodes == 1:
        return [*torchrun[:3], "--standalone", *torchrun[3:], *trainer]
    if slurm is None:
        raise DistributedError(f"nodes: {nodes} needs a SLURM allocation of {nodes} nodes (SLURM_JOB_ID and "
                               "SLURM_JOB_NODELIST unset): run through the SLURM profile (README, Several nodes), "
                               "or set nodes: 1")
    job_id, host = slurm
    return ["srun", "--nodes", str(nodes), "--ntasks-per-node", "1", *torchrun, "--nnodes", str(nodes),
            "--rdzv_backend", "c10d", "--rdzv_id", job_id, "--rdzv_endpoint", f"{host}:29500", *trainer]


def slurm_allocation() -> tuple[str, str] | None:
    """(job id, first host) of the SLURM allocation this process runs in, or None outside one."""
    import subprocess

    job, nodelist = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_JOB_NODELIST")
    if not job or not nodelist:
        return None
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                           check=True).stdout.split()
    return job, hosts[0]


def current() -> World:
    """The world of the joined process group, else one process of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), launched().local_rank)
    return World()


def local_device(device: str) -> str:
    """A bare ``cuda`` becomes this process's own GPU (``cuda:LOCAL_RANK``) when several processes run."""
    world = launched()
    return f"cuda:{world.local_rank}" if device == "cuda" and world.size > 1 else device


@contextlib.contextmanager
def joined(device: str) -> Iterator[World]:
    """Join the process group ``torchrun`` set up (NCCL on CUDA, gloo on CPU) for the block, and leave it after;
    a plain process (or one already in a group) just runs the block."""
    world = launched()
    if world.size == 1 or (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, the other processes after it (they then find what it cached: a knowledge
    space, its eigendecompositions) instead of computing the same file at the same time. When rank 0 fails
    inside the block, torchrun stops the waiting processes."""
    world = current()
    if world.size > 1 and not world.main:
        dist.barrier()
    yield
    if world.size > 1 and world.main:
        dist.barrier()


def shard(items: Sequence, world: World) -> list:
    """This process's contiguous block of a global batch whose length the world size divides."""
    per = len(items) // world.size
    return list(items[world.rank * per:(world.rank + 1) * per])


class Reducer:
    """Sums across the run's processes; a no-op for a single process. ``bytes`` counts the bytes handed to
    all-reduce since the last :meth:`take_bytes` (what one process sends and receives is about twice that for a
    ring all-reduce)."""

    def __init__(self, world: World, device: str | torch.device):
        self.world, self.device = world, torch.device(device)
        self.bytes = 0

    @property
    def active(self) -> bool:
        return self.world.size > 1

    def take_bytes(self) -> int:
        taken, self.bytes = self.bytes, 0
        return taken

    def sum_(self, tensors: Sequence[Tensor]) -> None:
        """Replace every tensor by its sum over the processes (in place), in flat buckets per dtype."""
        if not self.active:
            return
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            bucket, size = [], 0
            for t in group:
                nbytes = t.numel() * t.element_size()
                if bucket and size + nbytes > BUCKET_BYTES:
                    self._sum_bucket(bucket)
                    bucket, size = [], 0
                bucket.append(t)
                size += nbytes
            if bucket:
                self._sum_bucket(bucket)

    def _sum_bucket(self, bucket: list[Tensor]) -> None:
        if len(bucket) == 1 and bucket[0].is_contiguous():
            flat = bucket[0]
        else:
            flat = torch.cat([t.reshape(-1) for t in bucket])
        self.bytes += flat.numel() * flat.element_size()
        dist.all_reduce(flat)
        if flat is bucket[0]:
            return
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def sum_values(self, values: Sequence[float]) -> list[float]:
        """The sums over the processes of a few numbers (float64: counts stay exact)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (a small picklable value: a decision, validation metrics)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite every tensor with rank 0's (the start of training: every process from the same weights)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def check_same(self, tensors: Sequence[Tensor], what: str) -> None:
        """Raise when the tensors differ between processes (compared through one float64 checksum each): every
        process steps the same optimizer on the same summed gradients, so they must agree bit for bit."""
        if not self.active:
            return
        with torch.no_grad():
            sums = torch.stack([t.detach().double().sum() for t in tensors]).to(self.device)
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            worst = int((high - low).argmax())
            raise DistributedError(
                f"the {self.world.size} processes of this run hold different {what} (tensor {worst}: checksums "
                f"{float(low[worst])!r} to {float(high[worst])!r}): a computation gave different results on "
                "different devices. Rerun on devices of one model and software stack, or with "
                "torch.use_deterministic_algorithms(True); the last checkpoint resumes the run.")
