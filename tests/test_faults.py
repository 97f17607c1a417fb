"""Faults injected into the real engine (PROTOCOL.md, "Faults"): failpoints (``NEUS_FAILPOINTS``) and kill -9.

Every row of the fault table in PROTOCOL.md is caused here in the real command and its outcome checked on the files.
Several faults share one run where that is honest (one kill per process; the next process resumes the folder).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import trimesh
from engine_helpers import REPO, TINY, engine_env, group_gone, lines_until_step, parse_events, run_engine, start_engine
from omegaconf import OmegaConf
from paths import SAMPLE, needs_sample

from engine.atomic_files import TMP_PREFIX
from engine.failpoints import FailpointSyntaxError, parse

pytestmark = needs_sample
FIT = ("fit", str(SAMPLE), "--progress", "jsonl")
KILLED = -signal.SIGKILL


def temporaries(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"{TMP_PREFIX}.*"))


def load_ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_folder_sound(folder, allow_temporaries: int = 0) -> None:
    """Every file under its final name in the run folder is whole: it parses or loads with the reader a user
    would use; at most ``allow_temporaries`` half-written temporaries (hidden names) beside them."""
    for path in folder.rglob("*"):
        if not path.is_file() or path.name.startswith(TMP_PREFIX):
            continue
        if path.suffix == ".ckpt":
            state = load_ckpt(path)
            weights = [v for v in state["state_dict"].values() if v.is_floating_point()]
            assert all(bool(torch.isfinite(w).all()) for w in weights), f"{path}: non-finite weights saved"
        elif path.suffix == ".yaml":
            OmegaConf.load(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".ply", ".obj", ".glb"):
            assert len(trimesh.load(path, force="mesh").faces) > 0, path
    assert len(temporaries(folder)) <= allow_temporaries, temporaries(folder)


def test_failpoint_syntax():
    assert parse("nan_loss@7, oom@3-5,disk_full@export,kill@checkpoint_write,kill@12") == {
        "nan_loss": ["7"], "oom": ["3-5"], "disk_full": ["export"], "kill": ["checkpoint_write", "12"]}
    assert parse("") == {}
    for bad in ("nan_loss", "nan_loss@x", "kill@somewhere", "disk_full@7", "explode@3", "oom@3-"):
        with pytest.raises(FailpointSyntaxError):
            parse(bad)


def test_malformed_failpoints_are_bad_input(tmp_path):
    code, events, err = run_engine(*FIT, "--out", str(tmp_path / "run"), failpoints="kill@nowhere", timeout=120)
    assert code == 2, err
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "input"
    assert "NEUS_FAILPOINTS" in events[-1]["message"] and "kill@nowhere" in events[-1]["message"]
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "run").exists()


def test_nan_steps_are_skipped_and_kill_9_at_every_moment_resumes(tmp_path):
    """One run folder through five kills (four failpoint moments and a real SIGKILL from here), resumed each time,
    then finished: nothing under a final name is ever damaged, temporaries are removed by the next start, and two
    NaN steps left the weights and Adam moments exactly as the step before them."""
    run = tmp_path / "run"
    args = (*FIT, "--out", str(run), "--steps", "14", *TINY, "--set", "train.checkpoint_every_steps=1",
            "--set", "export.color=field")  # field colours: no depth map per photo, a few seconds less

    # NaN at steps 6 and 7 (fewer than train.guard.bad_steps: skipped, no rollback); killed after step 7, before
    # its checkpoint: last.ckpt is step 6, prev.ckpt step 5.
    code, events, err = run_engine(*args, failpoints="nan_loss@6-7,kill@7", timeout=300)
    assert code == KILLED, err
    assert not [e for e in events if e["event"] == "rollback"]
    assert all(e["loss"] is None for e in events if e["event"] == "progress" and e["step"] in (6, 7))
    assert_folder_sound(run)
    last, prev = load_ckpt(run / "checkpoints/last.ckpt"), load_ckpt(run / "checkpoints/prev.ckpt")
    assert (last["global_step"], prev["global_step"]) == (6, 5)
    schedules = ("model.cos_anneal_ratio", "model.occupancy.")  # buffers that follow the step, not the optimizer
    weights = [k for k in prev["state_dict"] if not k.startswith(schedules)]
    assert "model.geometry.encoding.table" in weights and len(weights) > 10
    for key in weights:
        assert torch.equal(prev["state_dict"][key], last["state_dict"][key]), f"{key} changed by a NaN step"
    prev_moments, last_moments = prev["optimizer_states"][0]["state"], last["optimizer_states"][0]["state"]
    for key, moments in prev_moments.items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(moments[name], last_moments[key][name]), f"Adam {name} changed by a NaN step"

    # A kill -9 sent from here (not a failpoint) while it trains.
    proc = start_engine(*args, "--resume")
    lines_until_step(proc, 9)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == KILLED
    assert_folder_sound(run, allow_temporaries=2)  # killed at any moment, maybe inside a checkpoint's rotation
    assert load_ckpt(run / "checkpoints/last.ckpt")["global_step"] >= 8

    # Killed with the next checkpoint's temporary half written: the last one stays whole.
    left_by_sigkill = set(temporaries(run))
    code, _, err = run_engine(*args, "--resume", failpoints="kill@checkpoint_write", timeout=300)
    assert code == KILLED, err
    assert_folder_sound(run, allow_temporaries=1)
    half_written = temporaries(run)
    assert len(half_written) == 1 and half_written[0].endswith(".ckpt") and not left_by_sigkill & set(half_written)

    # Killed between keeping prev.ckpt and renaming the new checkpoint onto last.ckpt; the start removed the
    # earlier temporary.
    before = load_ckpt(run / "checkpoints/last.ckpt")["global_step"]
    code, _, err = run_engine(*args, "--resume", failpoints="kill@checkpoint_rotate", timeout=300)
    assert code == KILLED, err
    assert "half-written" in err
    assert_folder_sound(run, allow_temporaries=1)
    assert not set(half_written) & set(temporaries(run))
    assert load_ckpt(run / "checkpoints/last.ckpt")["global_step"] == before
    assert load_ckpt(run / "checkpoints/prev.ckpt")["global_step"] == before

    # Training finishes; killed half-way through writing mesh.ply.
    code, events, err = run_engine(*args, "--resume", failpoints="kill@export_write", timeout=300)
    assert code == KILLED, err
    assert [e["stage"] for e in events if e["event"] == "stage"][-2:] == ["extracting", "exporting"]
    assert_folder_sound(run, allow_temporaries=1)
    assert not (run / "mesh.ply").exists() and temporaries(run)[0].startswith(f"{TMP_PREFIX}.mesh.")
    assert load_ckpt(run / "checkpoints/last.ckpt")["global_step"] == 14

    code, events, err = run_engine(*args, "--resume", timeout=300)
    assert code == 0, err
    assert events[-1]["event"] == "done"
    assert_folder_sound(run)
    assert trimesh.load(run / "mesh.ply").vertices.shape[0] > 100


def test_repeated_nan_rolls_back_with_lower_lr_then_stops(tmp_path):
    """With the static sampler, whose fused step (engine/fullstep.py) skips non-finite updates itself (the packed
    sampler's skip is checked bit for bit in the kill test above)."""
    run = tmp_path / "run"
    code, events, err = run_engine(*FIT, "--out", str(run), "--steps", "30", *TINY, "--set", "model.sampler=static",
                                   "--set", "train.guard.bad_steps=2", "--set", "train.guard.max_rollbacks=2",
                                   failpoints="nan_loss@3-30", timeout=300)
    assert code == 1, err
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert [(e["rollbacks"], e["lr_scale"]) for e in rollbacks] == [(1, 0.5), (2, 0.25)]
    assert rollbacks[0]["to_step"] == 0 and rollbacks[1]["to_step"] == 5  # the starting weights, then step 5's
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "diverged"
    assert "train.lr" in events[-1]["message"] and "step 5" in events[-1]["message"]
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert_folder_sound(run)
    state = load_ckpt(run / "checkpoints/last.ckpt")
    assert state["global_step"] == 5
    # Saved after the first rollback: the schedule's base learning rates are halved, and remembered on resume.
    cfg = OmegaConf.load(run / "config.yaml")
    base = state["lr_schedulers"][0]["base_lrs"]
    assert base[0] == pytest.approx(0.5 * cfg.train.lr_geometry_encoding)
    assert base[1] == pytest.approx(0.5 * cfg.train.lr)
    assert state["guard"] == {"rollbacks": 1, "lr_scale": 0.5}


def test_out_of_memory_halves_rays_then_stops_at_the_floor_with_a_hint(tmp_path):
    """The validation render at step 2 runs out of memory: its chunk halves and it completes. Step 3 runs out of
    memory: rays halve (256 -> 128 = train.min_rays) and training goes on; step 4 too, at the floor: one line naming
    the setting, exit 1, kind device, the checkpoint of step 3 kept."""
    run = tmp_path / "run"
    code, events, err = run_engine(*FIT, "--out", str(run), "--steps", "20", *TINY,
                                   "--set", "train.init_rays=256", "--set", "train.min_rays=128",
                                   "--set", "data.holdout_every=8", "--set", "train.val_every=2",
                                   "--set", "train.val_max_views=1", "--set", "train.val_downscale=4",
                                   failpoints="oom@validate,oom@3-4", timeout=300)
    assert code == 1, err
    backoff = [e for e in events if e["event"] == "memory_backoff"]
    assert [e.get("stage") for e in backoff] == ["validate", None]
    assert backoff[0]["chunk"] == 4096 and backoff[0]["setting"] == "train.val_downscale"
    assert [e["step"] for e in events if e["event"] == "validation"] == [2]
    assert [(e["step"], e["rays"]) for e in backoff[1:]] == [(3, 128)]
    assert backoff[1]["from_rays"] > 128 and backoff[1]["setting"] == "train.target_samples"
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "device"
    assert "train.min_rays" in events[-1]["message"] and "step 4" in events[-1]["message"]
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert_folder_sound(run)
    assert load_ckpt(run / "checkpoints/last.ckpt")["global_step"] == 3


def test_disk_full_during_checkpoint_and_export_damages_nothing(tmp_path, smoke_run):
    """Also: out of memory during the export's extraction halves its chunk and goes on."""
    run = smoke_run.check().copy_to(tmp_path / "run")
    ckpt, mesh = run / "checkpoints/last.ckpt", run / "mesh.ply"
    ckpt_bytes, mesh_bytes = ckpt.read_bytes(), mesh.read_bytes()

    code, events, err = run_engine(*FIT, "--out", str(run), "--resume", "--steps", "16",
                                   failpoints="disk_full@checkpoint", timeout=300)
    assert code == 1, err
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "disk"
    assert str(ckpt) in events[-1]["message"] and "no space" in events[-1]["message"]
    assert ckpt.read_bytes() == ckpt_bytes
    assert_folder_sound(run)

    code, events, err = run_engine("export", str(run), "--progress", "jsonl", "--resolution", "32", "--format", "ply",
                                   "--color", "field", failpoints="oom@extract,disk_full@export", timeout=300)
    assert code == 1, err
    backoff = [e for e in events if e["event"] == "memory_backoff"]  # extraction halved its chunk and went on
    assert [(e["stage"], e["setting"]) for e in backoff] == [("extract", "export.chunk")]
    assert backoff[0]["chunk"] == OmegaConf.load(run / "config.yaml").export.chunk // 2
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "disk"
    assert "mesh" in events[-1]["message"] and "no space" in events[-1]["message"]
    assert mesh.read_bytes() == mesh_bytes
    assert_folder_sound(run)


@pytest.mark.skipif(os.name != "posix", reason="process groups and SIGKILL are POSIX")
def test_kill_9_during_each_solve_stage_leaves_nothing_and_the_next_solve_cleans_up(tmp_path):
    """Eight photos of the bundled orbit (a ~10 s solve). Killed as each stage begins, the solve leaves no DATA_DIR
    (it is renamed into place only when complete), its pycolmap child ends too, and the next solve removes the
    killed ones' staging folders and completes."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for png in sorted((SAMPLE / "image").glob("*.png"))[:8]:
        shutil.copy(png, photos / png.name)
    out = tmp_path / "data"
    command = [sys.executable, "-m", "engine", "solve", str(photos), "--out", str(out), "--progress", "jsonl"]
    for moment in ("reading", "features", "matching", "mapping", "writing"):
        env = {**engine_env(), "NEUS_FAILPOINTS": f"kill@{moment}"}
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == KILLED, stdout
        assert parse_events(stdout)[-1] == {**parse_events(stdout)[-1], "event": "stage", "stage": moment}
        assert group_gone(proc.pid, 10.0), f"the solve's child outlived the engine killed at {moment}"
        assert not out.exists(), moment
        assert len(list(tmp_path.glob(".neus_solve.*"))) == 1  # its own; each start removed the one before

    code, events, err = run_engine(*command[3:], timeout=300)
    assert code == 0, err
    assert "left by an earlier solve that was killed" in err
    assert not list(tmp_path.glob(".neus_solve.*"))
    assert json.loads((out / "solve.json").read_text())["registered"] >= 3
