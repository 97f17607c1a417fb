"""The engine's process in real Blender (the bpy module), with an engine stand-in that makes the awkward cases
happen on time (``addon_helpers.STANDIN_ENGINE``): quit / disable / unregister end the engine's whole process group
even when the engine and its child ignore SIGINT and SIGTERM; an engine that goes silent is shown as not responding
and Kill ends it; after Cancel only silence gets the engine killed, so an export on cancel that keeps reporting
brings its mesh, and one that goes silent ends with the reason; the headless runner gives up on a silent engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from addon_helpers import IN_BLENDER, REPO, SAMPLE_SCENE, needs_sample, pids_alive, pump, standin_engine

pytestmark = [*IN_BLENDER, needs_sample, pytest.mark.skipif(os.name == "nt", reason="POSIX process groups"),
              pytest.mark.serial]  # silence deadlines of a second or two: run alone (conftest.py)

ADDON = "neus_blender_addon"


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """Makes the stand-in the Engine Python; call it with the mode (and the export's length)."""
    python = standin_engine(tmp_path)
    monkeypatch.setenv("NEUS_ENGINE_PYTHON", str(python))

    def use(mode: str, export_s: float = 3.0) -> Path:
        monkeypatch.setenv("STANDIN_MODE", mode)
        monkeypatch.setenv("STANDIN_EXPORT_S", str(export_s))
        return python

    return use


def configure(scene, out: Path) -> None:
    s = scene.neus
    s.data_dir, s.output_dir, s.device, s.show_preview = str(SAMPLE_SCENE), str(out), "cpu", False


def family(run_dir: Path, timeout: float = 20.0) -> list[int]:
    """The stand-in's pid and its child's, once it wrote them."""
    path = run_dir / "family.json"
    t0 = time.time()
    while not path.is_file():
        assert time.time() - t0 < timeout, f"the stand-in wrote no {path}"
        time.sleep(0.05)
    pids = json.loads(path.read_text())
    return [pids["engine"], pids["child"]]


def assert_gone(pids: list[int], within_s: float = 2.0) -> None:
    t0 = time.time()
    while pids_alive(pids) and time.time() - t0 < within_s:
        time.sleep(0.05)
    assert pids_alive(pids) == [], f"still running: {pids_alive(pids)} of {pids}"


@pytest.mark.parametrize("how", ["unregister", "disable"])
def test_unregister_and_disable_end_the_whole_process_group(bpy, standin, tmp_path, how):
    import addon_utils

    import neus_blender_addon as addon
    from neus_blender_addon import job_driver

    standin("family")
    if how == "disable":  # as Edit > Preferences > Add-ons does it: enabled as an add-on, then disabled
        addon.unregister()
        addon_utils.enable(ADDON, default_set=True, handle_error=None)
    configure(bpy.context.scene, tmp_path / "runs")
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    run = job_driver.active()
    pids = family(run.request.run_dir)
    assert run.process.pid == pids[0] and pids_alive(pids) == pids  # the engine (pid) and its child run
    env = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
    assert f"NEUS_PARENT_PID={os.getpid()}".encode() in env  # the engine can tell when Blender is gone
    t0 = time.time()
    if how == "disable":
        bpy.ops.preferences.addon_disable(module=ADDON)
        assert ADDON not in bpy.context.preferences.addons
    else:
        addon.unregister()
    try:
        assert_gone(pids)
        assert time.time() - t0 < 6.0  # 3 s for the engine to save its checkpoint, then SIGKILL to the group
        assert not job_driver.is_running()
    finally:
        addon.register()  # the fixture unregisters


QUIT_SCRIPT = textwrap.dedent(
    """
    import sys
    import bpy
    import neus_blender_addon as addon
    from neus_blender_addon import job_driver
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon.register()
    s = bpy.context.scene.neus
    s.data_dir, s.output_dir, s.device, s.show_preview = sys.argv[1], sys.argv[2], "cpu", False
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    print("RUN_DIR", job_driver.active().request.run_dir, flush=True)
    import json, os, time
    path = os.path.join(str(job_driver.active().request.run_dir), "family.json")
    while not os.path.exists(path):
        time.sleep(0.05)
    print("FAMILY", open(path).read(), flush=True)
    bpy.ops.wm.quit_blender()  # queued (the bpy module has no event loop): the script ends with the engine running
    """
)


def test_quitting_ends_the_whole_process_group(standin, tmp_path):
    python = standin("family")
    script = tmp_path / "script.py"
    script.write_text(QUIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NEUS_ENGINE_PYTHON": str(python)}
    res = subprocess.run([sys.executable, str(script), str(SAMPLE_SCENE), str(tmp_path / "runs")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("FAMILY"))
    pids = json.loads(line.split(" ", 1)[1])
    assert_gone([pids["engine"], pids["child"]])


def test_silent_engine_is_shown_as_not_responding_and_kill_ends_it(bpy, standin, tmp_path):
    from neus_blender_addon import job_driver, timer_ui

    standin("silent")
    configure(bpy.context.scene, tmp_path / "runs")
    assert bpy.ops.neus.reconstruct(mode="ASYNC", silence_limit=1.0) == {"FINISHED"}
    run = job_driver.active()
    pids = family(run.request.run_dir)
    s = bpy.context.scene.neus
    assert s.silent_s == 0  # it just spoke
    pump(lambda st: st.silent_s >= 2, timeout=10)
    assert s.running and s.state == "running" and run.process.running  # shown, never killed on its own
    assert bpy.ops.neus.kill.poll() and bpy.ops.neus.cancel.poll()  # the panel's two buttons
    assert bpy.ops.neus.kill() == {"FINISHED"}
    pump(lambda st: False, timeout=10)
    assert_gone(pids)
    assert s.state == "cancelled" and s.silent_s == 0 and not s.running
    assert s.last_error.startswith("no mesh on cancel: killed from the panel after "), s.last_error
    assert timer_ui.reports[-1] == ("WARNING", f"Reconstruction cancelled ({s.last_error})")


def cancel_after_two_steps(bpy, tmp_path):
    """Starts a run of the stand-in (silence limit 1 s), presses Cancel once it reports step 2 and drives the timer
    until the run ends; returns the run and the seconds from Cancel to its end."""
    from neus_blender_addon import job_driver

    configure(bpy.context.scene, tmp_path / "runs")
    assert bpy.ops.neus.reconstruct(mode="ASYNC", silence_limit=1.0) == {"FINISHED"}
    run = job_driver.active()
    pump(lambda st: st.step >= 2)
    t0 = time.time()
    assert bpy.ops.neus.cancel() == {"FINISHED"}
    pump(lambda st: False)
    return run, time.time() - t0


def test_export_on_cancel_that_keeps_reporting_is_never_killed(bpy, standin, tmp_path):
    standin("export", export_s=3.0)  # three times the silence limit
    run, elapsed = cancel_after_two_steps(bpy, tmp_path)
    s = bpy.context.scene.neus
    assert elapsed >= 3.0 and run.process.killed_for == "" and run.status.returncode == 130
    assert s.state == "cancelled" and run.imported_on_cancel and s.last_error == ""
    assert len(bpy.data.objects[s.result_object].data.vertices) == 3  # the stand-in's mesh.ply, in the scene


def test_export_on_cancel_that_goes_silent_ends_with_the_reason(bpy, standin, tmp_path):
    from neus_blender_addon import timer_ui

    standin("export-silent")
    run, elapsed = cancel_after_two_steps(bpy, tmp_path)
    s = bpy.context.scene.neus
    assert 1.0 <= elapsed < 3.0 and run.status.returncode == -9  # killed after 1 s of silence
    assert s.state == "cancelled" and not run.imported_on_cancel and not s.result_object
    assert s.last_error == "no mesh on cancel: the engine sent nothing for 1 s after Cancel", s.last_error
    assert timer_ui.reports[-1] == ("WARNING", f"Reconstruction cancelled ({s.last_error})")


def test_headless_gives_up_on_a_silent_engine(standin, tmp_path):
    python = standin("silent")
    out = tmp_path / "run"
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "neus_blender_addon.headless", str(SAMPLE_SCENE), "--out", str(out),
                          "--device", "cpu", "--engine-python", str(python), "--silence-limit", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert errors == [f"error: reconstruction failed: the engine sent nothing for 2 s (limit 2 s): killed it; its "
                      f"last checkpoint in {out} can be resumed"], res.stderr[-2000:]
    assert time.time() - t0 < 40
    pids = json.loads((out / "family.json").read_text())
    assert_gone([pids["engine"], pids["child"]])
    assert not (out / "scene.blend").exists()


def test_a_solve_follows_a_loaded_file_and_still_cancels(bpy, standin, tmp_path):
    """File > Open of a .blend with another scene name during Solve Cameras: its status lands in that scene (the
    persistent timer notices the run's scene is gone) and Cancel still reaches the engine."""
    import shutil

    from neus_blender_addon import job_driver

    standin("export", export_s=0.0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for png in sorted((SAMPLE_SCENE / "image").glob("*.png"))[:3]:
        shutil.copy(png, photos / png.name)
    other = tmp_path / "other.blend"
    bpy.context.scene.name = "Elsewhere"
    bpy.ops.wm.save_as_mainfile(filepath=str(other), copy=True)
    bpy.context.scene.name = "Scene"
    s = bpy.context.scene.neus
    s.data_dir, s.output_dir = str(photos), str(tmp_path / "runs")
    assert bpy.ops.neus.solve_cameras(mode="ASYNC") == {"FINISHED"}
    run = job_driver.last_job
    pump(lambda st: st.step >= 2)
    bpy.ops.wm.open_mainfile(filepath=str(other))
    assert [sc.name for sc in bpy.data.scenes] == ["Elsewhere"] and job_driver.is_running()
    pump(lambda st: st.running and st.step >= 3, timeout=20)
    assert run.scene_name == "Elsewhere"
    assert bpy.ops.neus.cancel() == {"FINISHED"}
    pump()
    assert bpy.data.scenes["Elsewhere"].neus.state == "cancelled" and run.process.returncode == 130
