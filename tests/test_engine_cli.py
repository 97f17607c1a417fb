"""The engine's command line and JSON-lines protocol, run for real on the bundled scene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from engine_helpers import REPO, SAMPLE, engine_env, run_engine
from paths import needs_sample
from PIL import Image

from engine.cpu_threads import usable_core_count
from engine.device import select_device

pytestmark = needs_sample


def photo_foreground_mean() -> np.ndarray:
    """Mean RGB (0-255) of the sample scene's photos inside their masks."""
    total, count = np.zeros(3), 0
    for image, mask in zip(sorted((SAMPLE / "image").glob("*.png")), sorted((SAMPLE / "mask").glob("*.png")),
                           strict=True):
        inside = np.asarray(Image.open(mask).convert("L")) > 127
        total += np.asarray(Image.open(image).convert("RGB"))[inside].sum(axis=0)
        count += int(inside.sum())
    return total / count


def test_fit_event_sequence_and_outputs(smoke_run):
    run = smoke_run.check().folder
    heartbeats = [e for e in smoke_run.events if e["event"] == "heartbeat"]  # any silent 3 s (a loaded machine)
    assert all(e["elapsed_s"] >= 3 and e["stage"] for e in heartbeats)
    loading = [e for e in smoke_run.events if e["event"] == "progress" and e.get("stage") == "loading"]
    # Libraries load with counts between them (each reported once a second at most; silent on a fast machine).
    assert all(e["unit"] in ("libraries", "files") and 0 < e["step"] <= e["total"] for e in loading), loading
    events = [e for e in smoke_run.events if e["event"] != "heartbeat" and e not in loading]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "stage" and events[0]["stage"] == "loading"
    assert kinds[1:3] == ["memory", "start"]
    memory, start = events[1], events[2]
    assert memory["downscale"] == memory["requested_downscale"] == 1 and memory["resolution"] == [400, 300]
    assert 0 < memory["estimate_bytes"] <= memory["budget_bytes"] and memory["where"] in ("host", "device")
    assert start["version"] == 1 and start["total_steps"] == 12 and start["device"] == str(select_device("auto"))
    assert 1 <= start["cpu_threads"] <= usable_core_count()
    assert start["config"]["n_images"] == 40 and start["config"]["resolution"] == [400, 300]
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages == ["loading", "training", "extracting", "exporting"]
    progress = [e for e in events if e["event"] == "progress" and "stage" not in e]  # training's, not the export's
    steps = [p["step"] for p in progress]
    assert steps == sorted(steps) and steps[-1] == 12
    for p in progress:
        assert {"step", "total", "loss", "psnr", "rays", "samples_per_step", "elapsed_s", "eta_s"} <= p.keys()
        assert p["total"] == 12 and p["rays"] > 0 and np.isfinite(p["loss"])
    assert kinds[-1] == "done"
    done = events[-1]
    assert done["steps"] == 12
    for name, path in done["files"].items():
        assert (run / path.split("/")[-1]).is_file() or name.startswith("obj_"), name
    mesh = trimesh.load(done["mesh"], process=False)
    assert len(mesh.faces) > 100 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
    header = Path(done["mesh"]).read_bytes()[:400].split(b"end_header")[0]
    assert all(f"property uchar {c}".encode() in header for c in ("red", "green", "blue"))  # not trimesh's default
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)
    # Photo colours: they vary over the surface and average near the photos' foreground (measured: 10-13 levels
    # per channel from it at 12-14 steps).
    assert colors.std(axis=0).min() > 10
    np.testing.assert_allclose(colors.mean(axis=0), photo_foreground_mean(), atol=20)
    norm = json.loads((run / "normalization.json").read_text())
    np.testing.assert_allclose(np.array(norm["scale_mat"]), np.load(SAMPLE / "cameras_sphere.npz")["scale_mat_0"])
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert not list(run.rglob(".neus_tmp*")), "temporary files left behind"


@pytest.mark.parametrize("case", ["missing_dir", "empty_dir", "data_is_a_file", "bad_preset", "bad_override",
                                  "negative_steps", "zero_resolution", "bad_config_file", "missing_device"])
def test_bad_input_exits_2_with_error_event(tmp_path, case):
    run = tmp_path / "run"
    data = tmp_path / "data"
    args = ["fit", str(data), "--out", str(run), "--progress", "jsonl"]
    if case == "empty_dir":
        data.mkdir()
    elif case == "data_is_a_file":
        data.write_text("not a folder")
    elif case in ("negative_steps", "zero_resolution"):  # they used to fail after training, leaving a checkpoint
        override = "train.steps=-5" if case == "negative_steps" else "export.resolution=0"
        args = ["fit", str(SAMPLE), "--out", str(run), "--progress", "jsonl", "--set", override]
    elif case == "bad_config_file":
        (tmp_path / "extra.yaml").write_text("train: [\n")
        args = ["fit", str(SAMPLE), "--out", str(run), "--progress", "jsonl", "--config", str(tmp_path / "extra.yaml")]
    elif case == "bad_preset":
        args = ["fit", str(SAMPLE), "--out", str(run), "--progress", "jsonl", "--preset", "ultra"]
    elif case == "bad_override":
        args = ["fit", str(SAMPLE), "--out", str(run), "--progress", "jsonl", "--set", "train.steps"]
    elif case == "missing_device":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        args = ["fit", str(SAMPLE), "--out", str(run), "--progress", "jsonl", "--device", "cuda"]
    code, events, err = run_engine(*args)
    assert code == 2
    assert events[-1]["event"] == "error"
    assert events[-1]["kind"] == ("device" if case == "missing_device" else "input")
    assert "\n" not in events[-1]["message"] and events[-1]["message"]
    assert "Traceback" not in err
    assert not run.exists()  # nothing written, not even the (empty) run folder
    if case == "data_is_a_file":
        assert events[-1]["message"] == f"{data}: not a folder"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="needs POSIX permissions (not root)")
def test_read_only_run_folder_is_bad_input(tmp_path, smoke_run):
    """fit into, export from and render from a folder that cannot be written to."""
    run = tmp_path / "run"
    run.mkdir(mode=0o555)
    code, events, err = run_engine("fit", str(SAMPLE), "--out", str(run), "--progress", "jsonl")
    assert code == 2 and events[-1]["message"].startswith(f"{run}: the run folder is not writable"), err
    assert "Traceback" not in err
    good = smoke_run.check().copy_to(tmp_path / "good")
    good.chmod(0o555)
    for command in ("export", "render"):
        code, events, err = run_engine(command, str(good), "--progress", "jsonl")
        assert code == 2 and "the run folder is not writable" in events[-1]["message"], err


def test_data_folder_whose_name_is_not_utf8_is_bad_input(tmp_path):
    import shutil

    data = os.fsdecode(os.fsencode(tmp_path) + b"/scan_\xff")  # Linux names are bytes: one that is not UTF-8
    try:
        shutil.copytree(SAMPLE, data)
    except (OSError, UnicodeError):
        pytest.skip("this file system wants UTF-8 names")
    code, events, err = run_engine("fit", data, "--out", str(tmp_path / "run"), "--progress", "jsonl")
    assert code == 2 and "not valid UTF-8" in events[-1]["message"] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_damaged_run_folder_and_bad_arguments_exit_2_with_one_line(tmp_path, capsys, smoke_run):
    """export / render / eval / fit --resume on a damaged run: exit 2, one line naming the file, nothing rewritten."""
    import shutil

    from engine.cli import main

    good = smoke_run.check().copy_to(tmp_path / "good")

    def damaged(name: str, damage) -> Path:
        run = tmp_path / name
        shutil.copytree(good, run)
        damage(run)
        return run

    ckpt = "checkpoints/last.ckpt"
    state = torch.load(good / ckpt, weights_only=False)
    state["state_dict"] = {k: v[..., :1] if v.ndim else v for k, v in state["state_dict"].items()}
    cases = [
        (damaged("zero_ckpt", lambda r: (r / ckpt).write_bytes(b"")), ["export"], ckpt, "unreadable checkpoint"),
        (damaged("other_ckpt", lambda r: torch.save(state, r / ckpt)), ["render", "--frames", "1"], ckpt,
         "does not fit the run's config.yaml"),
        (damaged("bad_yaml", lambda r: (r / "config.yaml").write_text("model: [\n")), ["export"], "config.yaml",
         "cannot read config"),
        (damaged("no_model", lambda r: (r / "config.yaml").write_text("seed: 1\n")), ["render"], "config.yaml",
         "not a run config"),
        (good, ["export", "--resolution", "1"], None, "--resolution must be at least 2"),
        (good, ["render", "--frames", "0"], None, "--frames must be positive"),
        (good, ["render", "--downscale", "100000"], None, "leaves no pixel"),
    ]
    for run, (command, *options), file, problem in cases:
        assert main([command, str(run), *options, "--progress", "none"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and problem in err[0] and (file is None or str(run / file) in err[0]), err
    mesh = str(good / "mesh.ply")
    for options, problem in [(["--samples", "0"], "--samples must be positive"),
                             (["--threshold", "-1"], "--threshold must be a positive distance")]:
        assert main(["eval", mesh, "--gt", mesh, *options]) == 2
        assert problem in capsys.readouterr().err

    # A damaged checkpoint stops --resume before anything is rewritten (config.yaml included).
    run = damaged("resume", lambda r: (r / ckpt).write_bytes(b"\x00" * 100))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, events, err = run_engine("fit", str(SAMPLE), "--out", str(run), "--resume", "--steps", "6",
                                   "--progress", "jsonl")
    assert code == 2 and events[-1]["event"] == "error" and str(run / ckpt) in events[-1]["message"], err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_export_eval_and_doctor(tmp_path, smoke_run):
    run = smoke_run.check().copy_to(tmp_path / "run")  # export and render write into it
    code, events, err = run_engine("export", str(run), "--resolution", "40", "--frame", "world", "--format", "glb",
                                   "--progress", "jsonl")
    assert code == 0, err
    files = events[-1]["files"]
    world = trimesh.load(files["ply_world"], process=False)
    norm = trimesh.load(files["ply"], process=False)
    scale_mat = np.load(SAMPLE / "cameras_sphere.npz")["scale_mat_0"]
    np.testing.assert_allclose(world.vertices, norm.vertices @ scale_mat[:3, :3].T + scale_mat[:3, 3], atol=1e-4)
    assert files["glb"].endswith(".glb")

    gt = SAMPLE / "gt_mesh_normalized.ply"
    proc = subprocess.run([sys.executable, "-m", "engine", "eval", str(run / "mesh.ply"), "--gt", str(gt), "--json",
                           "--samples", "20000", "--threshold", "0.02",
                           "--normalization", str(run / "normalization.json")],
                          cwd=REPO, env=engine_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    # A dozen training steps: still near the initial sphere, far from the monkey; world distances are 2.5x
    # (scale_mat).
    assert metrics["normalized"]["chamfer_l1"] > 0.02
    assert metrics["world"]["chamfer_l1"] == pytest.approx(2.5 * metrics["normalized"]["chamfer_l1"], rel=0.05)
    proc = subprocess.run([sys.executable, "-m", "engine", "eval", str(tmp_path / "nope.ply"), "--gt", str(gt)],
                          cwd=REPO, env=engine_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "nope.ply" in proc.stderr

    code, events, err = run_engine("render", str(run), "--frames", "3", "--downscale", "8", "--progress", "jsonl")
    assert code == 0, err
    frames = sorted((run / "render").glob("*.png"))
    assert len(frames) == 3 and (run / "render" / "trajectory.gif").stat().st_size > 0
    pixels = [np.asarray(Image.open(f).convert("RGB")).astype(float) for f in frames]
    for image in pixels:  # the object covers part of each frame, against the white background
        covered = (np.abs(image - 255.0).max(axis=-1) > 30).mean()
        assert 0.05 < covered < 0.95, covered
    assert all(np.abs(a - b).mean() > 1.0 for a, b in zip(pixels, pixels[1:], strict=False))  # the camera moves
    assert events[-1]["event"] == "done"

    proc = subprocess.run([sys.executable, "-m", "engine", "doctor", "--json"], cwd=REPO, env=engine_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["torch"] and info["devices"][0]["type"] == "cpu"
    assert info["default_device"] == select_device("auto").type  # what `--device auto` picks on this machine


def test_no_surface_is_reported_in_one_line_and_keeps_the_checkpoint(tmp_path):
    """A model with no zero level set (here: an init sphere far smaller than a voxel) is a training outcome, not a
    crash: exit 1, one line, no traceback, and the checkpoint stays for --resume or export."""
    run = tmp_path / "run"
    code, events, err = run_engine("fit", str(SAMPLE), "--out", str(run), "--preset", "preview", "--steps", "2",
                                   "--set", "model.geometry.mlp.sphere_init_radius=0.001",
                                   "--set", "export.resolution=32", "--set", "export.coarse_resolution=0",
                                   "--progress", "jsonl")
    assert code == 1, err[-2000:]
    assert events[-1]["event"] == "error" and events[-1]["message"].startswith("no surface found"), events[-1]
    assert "Traceback" not in err
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "mesh.ply").exists()
