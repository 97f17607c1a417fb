"""How many CPU threads the engine uses, chosen from the cores actually free for it.

The engine runs beside Blender (and, in CI, beside other jobs). PyTorch's default of one intra-op thread per core
oversubscribes a busy machine: every parallel operation waits for its slowest thread, and a thread that shares a
core with another process is the slowest by a scheduler time slice. Measured before this module: a ``preview`` run
took 852 s instead of 81 s with other jobs on the same 2 cores (engine/BENCHMARKS.md). So:

- cores usable by this process: the CPU affinity mask (``os.sched_getaffinity``), capped by a cgroup CPU quota where
  one is readable (containers);
- of those, the ones idle right now (sampled from ``/proc/stat`` for a fraction of a second, Linux only);
- ``NEUS_RESERVE_CORES=K`` keeps K of the usable cores free (e.g. for Blender's UI); ``NEUS_THREADS=N`` (or the
  standard ``OMP_NUM_THREADS``) sets the count outright and skips the sampling;
- OpenMP worker threads sleep instead of spinning between operations (``OMP_WAIT_POLICY=PASSIVE`` unless set), and
  one inter-op thread: the engine runs one graph at a time.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

THREADS_ENV = "NEUS_THREADS"
RESERVE_ENV = "NEUS_RESERVE_CORES"


def prepare_environment(environ: os._Environ | dict = os.environ) -> None:
    """Settings OpenMP reads once, when torch loads it: call before ``import torch`` (engine/__init__.py does)."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), None when unlimited/unreadable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> list[int] | None:
    """The CPU ids this process may run on (None where the OS does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def usable_core_count() -> int:
    """Cores this process may use: the affinity mask, capped by a cgroup quota (rounded up)."""
    cpus = usable_cpus()
    count = len(cpus) if cpus else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


def _cpu_times(cpus: list[int] | None) -> dict[str, tuple[int, int]]:
    """{cpu line name: (idle jiffies, total jiffies)} from /proc/stat for the given CPUs (all when None)."""
    wanted = None if cpus is None else {f"cpu{i}" for i in cpus}
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (wanted is not None and name not in wanted):
            continue
        values = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
        out[name] = (values[3] + values[4], sum(values))
    return out


def idle_cores(interval_s: float = 0.3) -> float | None:
    """How many of the usable CPUs were idle over the last ``interval_s`` (e.g. 1.0 of 2 when another process keeps
    one busy); None where /proc/stat is not available."""
    cpus = usable_cpus()
    try:
        before = _cpu_times(cpus)
        time.sleep(interval_s)
        after = _cpu_times(cpus)
    except (OSError, ValueError, IndexError):
        return None
    idle = 0.0
    for name, (idle1, total1) in after.items():
        idle0, total0 = before.get(name, (idle1, total1))
        if total1 > total0:
            idle += (idle1 - idle0) / (total1 - total0)
    return idle if after else None


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`choose_threads` decided, and from what (reported in the engine log and by ``engine.bench``)."""

    threads: int  # intra-op threads
    usable_cores: int  # affinity / cgroup
    idle_cores: float | None  # measured at start; None when not sampled
    source: str  # "NEUS_THREADS", "OMP_NUM_THREADS", "idle cores" or "usable cores" (no sampling possible)

    def describe(self) -> str:
        idle = "" if self.idle_cores is None else f", {self.idle_cores:.1f} idle"
        return f"CPU: {self.threads} thread(s) ({self.usable_cores} usable core(s){idle}; from {self.source})"


def _int_env(environ, name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise InputError(f"{name}={value!r}: expected a whole number") from None
    if number < 0 or (name != RESERVE_ENV and number == 0):
        raise InputError(f"{name}={value!r}: expected a {'non-negative' if name == RESERVE_ENV else 'positive'} number")
    return number


def choose_threads(environ: os._Environ | dict = os.environ, sample_s: float = 0.3) -> ThreadChoice:
    """The intra-op thread count for this process (see the module docstring for the rules)."""
    usable = usable_core_count()
    explicit = _int_env(environ, THREADS_ENV)
    if explicit is not None:
        return ThreadChoice(explicit, usable, None, THREADS_ENV)
    omp = _int_env(environ, "OMP_NUM_THREADS")
    if omp is not None:
        return ThreadChoice(omp, usable, None, "OMP_NUM_THREADS")
    reserve = _int_env(environ, RESERVE_ENV) or 0
    threads = max(1, usable - reserve)
    idle = idle_cores(sample_s) if threads > 1 else None
    if idle is not None:
        # A core counts as free when mostly idle; never fewer than one thread.
        threads = max(1, min(threads, math.floor(idle + 0.35)))
    return ThreadChoice(threads, usable, idle, "idle cores" if idle is not None else "usable cores")


def configure_torch_threads(environ: os._Environ | dict = os.environ) -> ThreadChoice:
    """Chooses the thread count and applies it to torch (call before the first tensor operation)."""
    import torch

    choice = choose_threads(environ)
    torch.set_num_threads(choice.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started (a second call in one process)
        pass
    return choice


__all__ = ["RESERVE_ENV", "THREADS_ENV", "ThreadChoice", "choose_threads", "configure_torch_threads",
           "idle_cores", "prepare_environment", "usable_core_count"]
