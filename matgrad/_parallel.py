"""``matgrad train`` under ``torchrun``: one process of several, or the only one.

``session(args)`` is what the command needs to know about the processes it runs among. Alone
(``WORLD_SIZE`` unset or 1) it changes nothing and never imports PyTorch. Among several it joins
the process group (``matgrad.distributed``), and every rank but 0 stays quiet: its standard
output goes to ``os.devnull``, it shows no progress bar, serves and writes nothing (``--save``,
``--graph``, ``--plot``, ``--explore`` and ``--live`` are rank 0's alone, checked and written by
it only, files after every rank has finished training). A rank that fails exits with its own
one-line error; the others learn of it at their next all-reduce (gloo sees the closed
connection) and stop with an error that says another process stopped; torchrun's SIGTERM to
the survivors ends them with a message too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Any, Iterator

__all__ = ["Session", "rank_tag", "session"]

TIMEOUT_VAR = "MATGRAD_DIST_TIMEOUT"
"""Seconds a collective waits for a process that neither takes part nor exits (default: PyTorch's 30 minutes)."""


def rank_tag() -> str:
    """``" [rank 1/2]"`` in a process of several started by torchrun, else ``""`` (for error lines)."""
    world = os.environ.get("WORLD_SIZE", "").strip()
    if world.isdigit() and int(world) > 1:
        return f" [rank {os.environ.get('RANK', '?')}/{world}]"
    return ""


class Session:
    """The processes a command runs among: ``rank``, ``world_size``, ``is_main``, and the few collectives it needs."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank = rank
        self.world_size = world_size
        self.is_main = rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: Any) -> Any:
        """``DistributedDataParallel(model)`` among several processes (rank 0's parameters everywhere), else None."""
        if not self.parallel:
            return None
        from matgrad.distributed import DistributedDataParallel

        return DistributedDataParallel(model)

    def batch_text(self, batch_size: int) -> str:
        if not self.parallel:
            return str(batch_size)
        return f"{batch_size} per process x {self.world_size} processes = {batch_size * self.world_size} per step"

    def sum(self, total: float, count: int) -> tuple[float, int]:
        """``total`` and ``count`` summed over the processes (one all-reduce)."""
        if not self.parallel:
            return total, count
        import matgrad as mg
        from matgrad.distributed import all_reduce

        both = mg.Tensor2D([[total, float(count)]], dtype="float64")
        values = all_reduce(both).tolist()[0]
        return values[0], int(values[1])

    @contextlib.contextmanager
    def main_first(self, needed: bool = True) -> Iterator[None]:
        """Rank 0 runs the block first (a download), the others after it has finished."""
        if not (self.parallel and needed):
            yield
            return
        from matgrad.distributed import barrier

        if not self.is_main:
            barrier()
        yield
        if self.is_main:
            barrier()

    def finish(self) -> None:
        """Wait until every process has finished training (before rank 0 writes anything)."""
        if self.parallel:
            from matgrad.distributed import barrier

            barrier()


def group_backend(args: argparse.Namespace) -> str:
    """``"nccl"`` where the tensors live on CUDA GPUs (``--backend torch --device cuda``), else ``"gloo"``."""
    device = str(getattr(args, "device", None) or "")
    return "nccl" if getattr(args, "backend", None) == "torch" and device.startswith("cuda") else "gloo"


@contextlib.contextmanager
def session(args: argparse.Namespace) -> Iterator[Session]:
    """The processes ``matgrad train`` runs among, from torchrun's environment (alone when there is none)."""
    from matgrad import distributed as dist

    world = dist.env_world_size()
    if world <= 1 and not dist.is_initialized():
        yield Session()
        return
    own = not dist.is_initialized()
    if own:
        timeout = os.environ.get(TIMEOUT_VAR, "").strip()
        try:
            seconds = float(timeout) if timeout else None
        except ValueError:
            raise dist.DistributedError(f"{TIMEOUT_VAR}={timeout!r} is not a number of seconds", site=False) from None
        dist.init_process_group(group_backend(args), timeout=seconds)
    par = Session(dist.get_rank(), dist.get_world_size())

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise dist.DistributedError(
            "stopped by SIGTERM: torchrun stops every process when one fails (that one's message says why)",
            site=False,
        )

    restore: Any = None
    with contextlib.ExitStack() as stack:
        try:
            restore = signal.signal(signal.SIGTERM, terminated)
        except ValueError:  # not the main thread: leave signals alone
            restore = None
        if not par.is_main:
            for output in ("save", "graph", "plot", "explore", "live", "explore_every"):
                if hasattr(args, output):
                    setattr(args, output, None)
            args.quiet = True
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(devnull))
        try:
            yield par
        finally:
            if restore is not None:
                signal.signal(signal.SIGTERM, restore)
            if own:
                dist.destroy_process_group()
            sys.stdout.flush()
