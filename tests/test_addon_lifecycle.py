"""A run's life in real Blender (the bpy module) with the real engine: file loads during a run, clean exits,
numbered runs and result objects, resume, export on cancel, undo, reports, the background engine check.

Runs are tiny (a few steps, coarse extraction): what is under test is the add-on's handling of the engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from addon_helpers import REPO, SAMPLE_SCENE, WITH_ENGINE_RUNS, pump

pytestmark = WITH_ENGINE_RUNS

STEPS = 8
FAST_EXPORT = "export.resolution=40 export.coarse_resolution=0 export.clean=false"


def configure(scene, out, steps: int = STEPS) -> None:
    s = scene.neus
    s.data_dir = str(SAMPLE_SCENE)
    s.output_dir = str(out)
    s.preset = "preview"
    s.device = "cpu"
    s.steps = steps
    s.show_preview = False
    s.engine_settings = FAST_EXPORT


def setup_scene(scene, request) -> None:
    """The ``bpy`` fixture's set-up (tests/conftest.py)."""
    configure(scene, request.getfixturevalue("tmp_path") / "runs")


def training(st) -> bool:
    return st.stage == "training" and st.step >= 1


def test_file_load_during_a_run_keeps_it_attached(bpy, tmp_path):
    from neus_blender_addon import job_driver

    s = bpy.context.scene.neus
    s.steps = 100000  # would run for hours
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    run = job_driver.active()
    pump(training)
    bpy.ops.wm.read_homefile()  # File > New: a new file, new scene, the add-on stays registered
    assert bpy.app.timers.is_registered(job_driver.timer_step)  # the persistent timer survived the load
    assert job_driver.active() is run and run.process.running
    pump(lambda st: st.running and st.step > 0, timeout=60)  # the new file's scene shows the run
    assert bpy.ops.neus.cancel() == {"FINISHED"}  # Cancel still reaches the engine
    pump(lambda st: False, timeout=60)
    assert run.status.state == "cancelled" and not job_driver.is_running()
    new = bpy.context.scene
    assert new.neus.state == "cancelled" and not new.neus.running
    # A second run starts (no "already running") and lands in the new file.
    configure(new, tmp_path / "runs2")
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    pump(lambda st: False)
    assert new.neus.state == "done", new.neus.last_error
    assert new.neus.result_object in bpy.data.objects


@pytest.mark.parametrize("handler", ["load_post", "timer only"])
def test_file_open_during_a_run_lands_in_the_opened_files_scene(bpy, tmp_path, handler):
    """File > Open of a .blend whose scene has another name: the run's status and result land in that scene, also
    with the load_post handler off (the persistent timer notices on its own that the run's scene is gone)."""
    import neus_blender_addon as addon
    from neus_blender_addon import job_driver

    other = tmp_path / "other.blend"
    scene = bpy.context.scene
    scene.name = "Elsewhere"
    bpy.ops.wm.save_as_mainfile(filepath=str(other), copy=True)  # the file to open; this one stays unsaved
    scene.name = "Scene"
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    run = job_driver.active()
    pump(training)
    if handler == "timer only":
        bpy.app.handlers.load_post.remove(addon._reset_stale_status)
    try:
        bpy.ops.wm.open_mainfile(filepath=str(other))
    finally:
        if addon._reset_stale_status not in bpy.app.handlers.load_post:
            bpy.app.handlers.load_post.append(addon._reset_stale_status)
    follows_at_once = handler == "load_post"  # else at the timer's next tick
    assert [sc.name for sc in bpy.data.scenes] == ["Elsewhere"]
    assert bpy.context.scene.neus.state == ("running" if follows_at_once else "idle")
    assert bpy.app.timers.is_registered(job_driver.timer_step) and job_driver.active() is run
    pump(lambda st: False)
    opened = bpy.data.scenes["Elsewhere"]
    assert run.request.scene_name == "Elsewhere" and run.status.state == "done", run.status.last_error
    assert opened.neus.state == "done" and opened.neus.step == STEPS and not opened.neus.running
    assert opened.neus.run_dir == str(tmp_path / "runs" / "run_001")
    assert opened.neus.result_object == "sample_scene NeuS run_001"
    assert opened.neus.result_object in opened.objects  # the result is in the opened file's scene


CLEAN_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import bpy
    import neus_blender_addon as addon
    from neus_blender_addon import job_driver
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon.register()
    s = bpy.context.scene.neus
    s.data_dir, s.output_dir, s.preset, s.device, s.steps = sys.argv[1], sys.argv[2], "preview", "cpu", 100000
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    print("ENGINE_PID", job_driver.active().process.pid, flush=True)
    time.sleep(1.0)
    # ends here: no unregister(), an engine still running
    """
)


@pytest.mark.skipif(os.name == "nt", reason="POSIX process check")
def test_script_that_never_unregisters_exits_and_leaves_no_engine(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(CLEAN_EXIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.time()
    res = subprocess.run([sys.executable, str(script), str(SAMPLE_SCENE), str(tmp_path / "runs")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert time.time() - t0 < 60
    pid = int(next(ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("ENGINE_PID")))
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"engine process {pid} outlived the script")


def test_two_runs_two_results_undo_and_the_artists_changes_kept(bpy, tmp_path):
    from neus_blender_addon import blender_mesh, reconstruct, timer_ui

    # Blender's UI has a first undo step from loading the file; the bpy module in background mode does not.
    bpy.ops.ed.undo_push(message="before the run")
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    pump(lambda st: False)
    s = bpy.context.scene.neus
    first = s.result_object
    assert s.state == "done" and first == "sample_scene NeuS run_001", s.last_error
    assert s.run_dir == str(tmp_path / "runs" / "run_001") and (tmp_path / "runs" / "run_001" / "mesh.ply").is_file()
    assert timer_ui.reports[-1] == ("INFO", f"Reconstruction finished: '{first}'")  # seen with the sidebar closed
    assert bpy.data.texts[reconstruct.LOG_TEXT].as_string().startswith("# ")  # the engine log, kept in a Text
    # The import is one undo step: undo removes the result, redo brings it back.
    win = bpy.context.window_manager.windows[0]
    with bpy.context.temp_override(window=win, screen=win.screen):  # as in the UI (the tests have no window)
        bpy.ops.ed.undo()
        assert first not in bpy.data.objects
        bpy.ops.ed.redo()
    assert first in bpy.data.objects
    bpy.data.objects[first].modifiers.new("artist's bevel", "BEVEL")  # the artist works on the first result
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    pump(lambda st: False)
    s = bpy.context.scene.neus
    assert s.state == "done" and s.result_object == "sample_scene NeuS run_002"  # its own folder and object
    assert (tmp_path / "runs" / "run_002" / "mesh.ply").is_file()
    kept = bpy.data.objects[first]
    assert [m.name for m in kept.modifiers] == ["artist's bevel"]
    # The add-on replaces only its own, untouched objects: importing over the changed one adds a new object.
    coll = kept.users_collection[0]
    again = blender_mesh.import_mesh(tmp_path / "runs" / "run_001" / "mesh.ply", first, coll)
    assert again.name != first and bpy.data.objects[first].modifiers[0].name == "artist's bevel"
    untouched = bpy.data.objects["sample_scene NeuS run_002"]
    replaced = blender_mesh.import_mesh(tmp_path / "runs" / "run_002" / "mesh.ply", untouched.name, coll)
    assert replaced.name == "sample_scene NeuS run_002" and "sample_scene NeuS run_002.001" not in bpy.data.objects


def test_cancel_imports_the_current_mesh_then_resume_finishes_the_run(bpy, tmp_path, monkeypatch):
    from neus_blender_addon import job_driver, timer_ui

    s = bpy.context.scene.neus
    s.steps = 20
    assert s.export_on_cancel  # on by default
    assert bpy.ops.neus.resume.poll() is False  # nothing to resume yet
    # The export on cancel starts with 7 s in native code holding Python's lock (a failpoint), past a silence limit
    # of 5 s: the engine's heartbeats (one after every 3 s without an event) keep it alive, so the add-on lets it
    # finish. (With a limit of 2 s, below the heartbeat's 3 s, the add-on killed it and said so.)
    monkeypatch.setenv("NEUS_FAILPOINTS", "sleep@extracting")
    assert bpy.ops.neus.reconstruct(mode="ASYNC", silence_limit=5.0) == {"FINISHED"}
    monkeypatch.delenv("NEUS_FAILPOINTS")
    pump(lambda st: st.stage == "training" and st.step >= 2)
    t0 = time.time()
    assert bpy.ops.neus.cancel() == {"FINISHED"}
    pump(lambda st: False, timeout=120)
    s = bpy.context.scene.neus
    run = job_driver.last_job
    assert time.time() - t0 > 7.0 and run.process.killed_for == "" and run.status.returncode == 130, (
        s.state, s.last_error, run.process.killed_for, run.status.returncode, time.time() - t0)
    assert s.state == "cancelled" and run.imported_on_cancel, s.last_error
    name = s.result_object
    assert name == "sample_scene NeuS run_001" and len(bpy.data.objects[name].data.vertices) > 0
    assert timer_ui.reports[-1] == ("WARNING", f"Reconstruction cancelled; imported the current mesh as '{name}'")
    cancelled_at = run.status.step
    assert 2 <= cancelled_at < 20
    assert bpy.ops.neus.resume.poll()
    assert bpy.ops.neus.resume(mode="ASYNC") == {"FINISHED"}
    resumed = job_driver.active()
    assert "--resume" in resumed.process.argv and resumed.request.run_dir == tmp_path / "runs" / "run_001"
    first_steps = []
    pump(lambda st: st.stage == "training" and first_steps.append(st.step) and False)  # loading counts libraries
    s = bpy.context.scene.neus
    assert s.state == "done" and s.step == 20, s.last_error
    assert min(x for x in first_steps if x > 0) >= cancelled_at  # continued, not restarted
    # The object the cancel imported was the add-on's and untouched: the finished mesh replaced it.
    assert s.result_object == name and f"{name}.001" not in bpy.data.objects
    assert not (tmp_path / "runs" / "run_002").exists()


def test_engine_failure_is_reported_from_the_timer(bpy, tmp_path):
    from neus_blender_addon import timer_ui

    bpy.context.scene.neus.engine_settings = "train.lr=[0.1"  # the engine's config parser rejects it
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    pump(lambda st: False, timeout=120)
    s = bpy.context.scene.neus
    assert s.state == "failed"
    level, message = timer_ui.reports[-1]
    assert level == "ERROR" and message == f"Reconstruction failed: {s.last_error}"
    log = (tmp_path / "runs" / "run_001" / "engine_stderr.log").read_text()
    assert s.log_tail and s.log_tail.splitlines()[-1] in log  # the panel shows the log's last lines


def test_check_engine_returns_at_once_and_reports_later(bpy):
    from neus_blender_addon import operators, timer_ui

    t0 = time.time()
    assert bpy.ops.neus.check_engine() == {"FINISHED"}
    assert time.time() - t0 < 2.0 and operators.engine_check_result is None  # the doctor still runs
    assert not bpy.ops.neus.check_engine.poll()  # one check at a time
    deadline = time.time() + 240
    while operators.check_engine_step() is not None:
        assert time.time() < deadline, "engine doctor did not answer"
        time.sleep(0.2)
    ok, lines = operators.engine_check_result
    assert ok and lines[0].startswith("Engine: ") and any(ln.startswith("torch") for ln in lines)
    assert timer_ui.reports[-1][0] == "INFO" and timer_ui.reports[-1][1].startswith("Engine OK: ")
