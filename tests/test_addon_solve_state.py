"""The bpy-free camera-solve state machine (``neus_blender_addon.core.solve_state``), with plain pytest: engine events
as the engine prints them (``engine/PROTOCOL.md``), a real dataset read by the add-on's camera loader where the
Blender host imports cameras, and real processes that speak the protocol for start, Cancel, Kill and silence."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest
from addon_helpers import SAMPLE_SCENE, needs_sample

from neus_blender_addon.core import camera_source, solve_state
from neus_blender_addon.core.engine_process import EngineLocation
from neus_blender_addon.core.errors import AddonError


class CameraHost:
    """A host that "imports" the solved dataset by loading it with the add-on's camera loader (what the bpy layer
    does first) and counting its cameras and sparse points."""

    def __init__(self) -> None:
        self.imported: list[str] = []
        self.lines: list[str] = []

    def import_cameras(self, job, out_dir: str) -> tuple[str, int, int]:
        cams = camera_source.load_camera_set(out_dir)  # AddonError on a bad dataset, as the Blender import
        points = camera_source.load_sparse_points(out_dir) if cams.format == "colmap" else None
        self.imported.append(out_dir)
        return camera_source.dataset_name(out_dir), len(cams.names), 0 if points is None else len(points[0])

    def say(self, job, text: str) -> None:
        self.lines.append(text)


def make_solve(tmp_path: Path, out: Path | None = None, python: Path | None = None, **kw) -> solve_state.SolveJob:
    return solve_state.new_solve("Scene", tmp_path / "photos", out or tmp_path / "runs" / "photos solved",
                                 EngineLocation(python or Path(sys.executable), "test", None), **kw)


def feed(job, host, *events) -> None:
    for e in events:
        job.handle_event(host, e)


START = {"event": "start", "version": 1, "command": "solve", "device": "cpu"}


@needs_sample
def test_done_solve_imports_the_solved_cameras_and_keeps_the_warnings(tmp_path):
    job, host = make_solve(tmp_path, out=SAMPLE_SCENE), CameraHost()
    feed(job, host, START, {"event": "stage", "stage": "features"},
         {"event": "progress", "stage": "features", "step": 3, "total": 40, "unit": "images"},
         {"event": "warning", "message": "12 of 40 photos are blurry"})
    assert not job.finished and job.status.counts() == (3, 40, "images")
    assert job.warnings == ["12 of 40 photos are blurry"]
    assert "[neus] solve stage: features" in host.lines and "[neus] warning: 12 of 40 photos are blurry" in host.lines
    feed(job, host, {"event": "done", "mesh": None}, {"event": "exit", "returncode": 0, "state": "done"})
    assert job.finished and job.status.state == "done" and job.status.stage == "solved"
    assert host.imported == [str(SAMPLE_SCENE)] and job.imported == "sample_scene"
    assert host.lines[-1] == "[neus] solved: 40 cameras and 0 sparse points in 'sample_scene'"
    assert job.status.last_error == "12 of 40 photos are blurry"
    assert job.outcome() == ("WARNING", f"Cameras solved into {SAMPLE_SCENE} (12 of 40 photos are blurry)")


def test_solved_but_unreadable_dataset_fails_the_solve(tmp_path):
    out = tmp_path / "runs" / "photos solved"
    out.mkdir(parents=True)  # the engine said done but left no dataset
    job, host = make_solve(tmp_path, out=out), CameraHost()
    feed(job, host, START, {"event": "exit", "returncode": 0, "state": "done"})
    assert job.finished and job.status.state == "failed" and job.status.stage == "failed"
    assert job.status.last_error.startswith("the cameras were solved but could not be imported: ")
    assert str(out) in job.status.last_error and host.lines[-1] == f"[neus] solve failed: {job.status.last_error}"
    assert job.outcome() == ("ERROR", f"Camera solving failed: {job.status.last_error}")


def test_engine_error_and_cancel_end_the_solve(tmp_path):
    job, host = make_solve(tmp_path), CameraHost()
    feed(job, host, START, {"event": "error", "kind": "input", "message": "/p: no photos"},
         {"event": "exit", "returncode": 2, "state": "failed"})
    assert job.status.state == "failed" and job.status.last_error == "input error: /p: no photos"
    assert host.lines[-1] == "[neus] solve failed: input error: /p: no photos" and host.imported == []
    job, host = make_solve(tmp_path), CameraHost()
    feed(job, host, START, {"event": "exit", "returncode": 130, "state": "cancelled", "killed": ""})
    assert job.status.state == "cancelled" and job.status.last_error == ""
    assert host.lines[-1] == "[neus] solve cancelled"
    assert job.outcome() == ("WARNING", "Camera solving cancelled")
    assert not job.cancel() and not job.kill()  # ended: nothing to stop


def test_bad_matcher_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(AddonError, match="unknown matcher"):
        make_solve(tmp_path, matcher="vocab")
    assert not (tmp_path / "runs").exists()


# -- real processes ------------------------------------------------------------------------------------------
# Started exactly as the engine (``<python> -m engine solve SOURCE --out OUT ...``), they speak the protocol.
TALKER = """
import json, signal, sys, time
# The real engine installs its own SIGINT handler; a child inherits an ignored SIGINT from its parent otherwise.
signal.signal(signal.SIGINT, signal.default_int_handler)
def emit(event, **kw):
    print(json.dumps({"event": event, "time": time.time(), **kw}), flush=True)
emit("start", version=1, command="solve", device="cpu")
emit("stage", stage="features")
MODE
"""
CHATTY = "for step in range(1, 100000):\n    emit('progress', stage='features', step=step, total=100000)\n" \
         "    time.sleep(0.05)"
SILENT = "time.sleep(60)"


def fake_engine(folder: Path, body: str) -> Path:
    path = folder / "python"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(TALKER).replace("MODE", body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def drive(job, host, until, timeout: float = 20.0) -> None:
    """Calls :meth:`Job.poll` as the driver's timer does until ``until(job)`` holds."""
    t0 = time.time()
    while not until(job):
        assert time.time() - t0 < timeout, f"timed out: {job.status.state} {job.status.stage} {job.status.counts()}"
        job.poll(host)
        time.sleep(0.05)


posix_only = pytest.mark.skipif(os.name == "nt", reason="the fake engine is a #! script")


@posix_only
def test_a_real_solve_process_reports_and_cancels(tmp_path):
    job, host = make_solve(tmp_path, python=fake_engine(tmp_path, CHATTY)), CameraHost()
    job.start(host)
    assert job.status.state == "running" and job.status.stage == "solving"
    assert host.lines[0].startswith("[neus] solving cameras: ") and " -m engine solve " in host.lines[0]
    assert (tmp_path / "runs" / "photos solved.solve_log").parent.is_dir()
    drive(job, host, lambda j: j.status.phase_step >= 2)
    assert job.status.stage == "features" and not job.finished
    assert job.cancel() and job.status.stage == "cancelling"
    drive(job, host, lambda j: j.finished)
    assert job.status.state == "cancelled" and job.status.stage == "cancelled" and host.imported == []
    assert job.process.returncode is not None and not job.cancel()


@posix_only
def test_kill_ends_a_real_solve_process(tmp_path):
    job, host = make_solve(tmp_path, python=fake_engine(tmp_path, SILENT)), CameraHost()
    job.start(host)
    drive(job, host, lambda j: j.status.stage == "features")
    assert job.kill() and job.status.stage == "killing"
    drive(job, host, lambda j: j.finished)
    assert job.status.state == "cancelled" and job.process.returncode == -9
    assert job.status.last_error.startswith("killed from the panel after ") and job.status.last_error.endswith(
        " s without a word")


@posix_only
def test_blocking_solve_gives_up_on_a_silent_engine(tmp_path):
    job, host = make_solve(tmp_path, python=fake_engine(tmp_path, SILENT), silence_s=1.0), CameraHost()
    job.start(host)
    t0 = time.time()
    while not job.finished:  # as the driver's run_blocking: one event at a time, nobody to press Kill
        assert time.time() - t0 < 20, job.status.stage
        job.next_event(host, 0.1)
    assert 1.0 <= time.time() - t0 < 10
    assert job.gave_up == "the engine sent nothing for 1 s: killed it"
    assert f"[neus] {job.gave_up}" in host.lines
    assert job.status.state == "cancelled" and job.status.last_error == job.gave_up and job.process.returncode == -9


@posix_only
def test_an_add_on_failure_stops_the_engine_and_ends_the_solve(tmp_path):
    job, host = make_solve(tmp_path, python=fake_engine(tmp_path, CHATTY)), CameraHost()
    job.start(host)
    job.fail_internal(host, RuntimeError("boom"))
    assert job.finished and job.status.state == "failed" and job.status.last_error == "add-on error while solving: boom"
    assert job.process.wait(10) is not None  # the engine is gone (its reader records the exit code)
    assert host.lines[-1] == "[neus] solve failed: add-on error while solving: boom"
