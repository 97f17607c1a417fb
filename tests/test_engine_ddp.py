"""Two CPU processes under Lightning DDP (gloo): the ranks draw different rays yet end with identical weights and
identical occupancy grids (each rank refreshes its grid from its own random cells; rank 0's is shared)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from engine_helpers import engine_env
from paths import HAS_SAMPLE, NO_SAMPLE_REASON, REPO

STEPS = 5  # the grid refreshes at steps 0, 2 and 4: the last step refreshes it, nothing re-syncs it afterwards


@pytest.mark.skipif(not HAS_SAMPLE, reason=NO_SAMPLE_REASON)
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_ddp_ranks_hold_identical_weights_and_grids(tmp_path):
    env = engine_env()
    env["OMP_NUM_THREADS"] = "1"  # two processes on the same cores
    env["PYTHONPATH"] = str(REPO / "tests") + os.pathsep + env["PYTHONPATH"]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_worker.py"), str(tmp_path), str(STEPS)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["step"] == STEPS for r in ranks)
    # Each rank trained on its own rays (the same seed everywhere used to give every rank the same batch) ...
    assert not torch.equal(ranks[0]["next_rays"], ranks[1]["next_rays"])
    # ... and yet every parameter and buffer agrees exactly, the occupancy grid included.
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and "occupancy.occupied" in a and "occupancy.density" in a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different
    # The grid really was refreshed (pruned), so agreeing is not trivial.
    assert not bool(a["occupancy.occupied"].all()) and float(a["occupancy.density"].max()) > 0
