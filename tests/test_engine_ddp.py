"""Two CPU processes under Lightning DDP (gloo): the ranks draw different rays yet end with identical weights and
identical occupancy grids (each rank refreshes its grid from its own random cells; rank 0's is shared); and the
``fit`` command itself with two ranks, where only rank 0 reports, writes and exports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
import trimesh
from engine_helpers import engine_env, lines_until_step, parse_events, start_engine
from paths import HAS_SAMPLE, NO_SAMPLE_REASON, REPO, SAMPLE

from engine.ranks import is_first_rank
from engine.run_dir import read_checkpoint

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


@pytest.mark.skipif(not HAS_SAMPLE, reason=NO_SAMPLE_REASON)
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_fit_command_with_two_cpu_ranks_reports_and_exports_once(tmp_path):
    """``fit --set train.devices=2`` on the CPU: Lightning starts rank 1 by running the same command again. Only
    rank 0 may report, write and export; a stop request must end both ranks at the same step (else one waits for
    the other in a collective forever), and rank 1 must exit 0 (else Lightning kills rank 0 mid-export)."""
    run = tmp_path / "run"
    settings = [s for kv in ddp_worker.SETTINGS for s in ("--set", kv)]
    env = engine_env()
    env["OMP_NUM_THREADS"] = "1"  # two processes on the same cores
    # A checkpoint every step, timed by the clock: each rank's own clock would decide differently.
    proc = start_engine("fit", str(SAMPLE), "--out", str(run), "--steps", "5000", "--progress", "jsonl",
                        "--export-on-cancel", "--set", "train.devices=2", "--set", "train.checkpoint_every_steps=0",
                        "--set", "train.checkpoint_every_seconds=0.001", "--set", "export.resolution=32",
                        "--set", "export.coarse_resolution=16", *settings, env=env)
    step = 3
    try:
        lines = lines_until_step(proc, step)  # a few steps trained by both ranks, then the stop request rank 0 reads
        (run / "STOP").touch()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = parse_events("".join(lines) + out)
    assert proc.returncode == 130, err[-3000:]
    assert "MEMBER: 2/2" in err, "rank 1 never joined: " + err[-3000:]  # Lightning's line from the second rank
    # Rank 1's stdout is rank 0's stderr: it must have said nothing there, and rank 0 everything once.
    assert not [line for line in err.splitlines() if line.startswith('{"event"')], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 1 and kinds[-1] == "cancelled" and kinds.count("cancelled") == 1
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages == ["loading", "training", "extracting", "exporting"]
    steps = [e["step"] for e in events if e["event"] == "progress" and "stage" not in e]  # training's
    assert steps == sorted(set(steps)) and step <= events[-1]["step"] < 5000
    # One export and one checkpoint, at the step where both ranks stopped, and no temporary left by either rank.
    mesh = trimesh.load(events[-1]["mesh"], process=False)
    assert len(mesh.vertices) > 0
    ckpt = read_checkpoint(Path(events[-1]["checkpoint"]), resume=True)
    assert ckpt["global_step"] == events[-1]["step"]
    assert not list(run.rglob(".neus_tmp*")), "temporary files left behind"


def test_global_rank_zero_is_told_from_the_launchers_variables():
    assert is_first_rank({})  # the command a user or the add-on started
    assert is_first_rank({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"})  # rank 0 once Lightning launched
    assert not is_first_rank({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"})  # the copy Lightning starts
    assert not is_first_rank({"RANK": "3", "LOCAL_RANK": "0"})  # torchrun: the global rank comes first
    assert not is_first_rank({"LOCAL_RANK": "0", "NODE_RANK": "1"})  # first process of the second node
