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
from addon_helpers import ENGINE_CLI, HAS_BPY, NO_BPY_REASON, REPO, SAMPLE_SCENE

pytestmark = [
    pytest.mark.blender,
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_BPY, reason=NO_BPY_REASON),
    pytest.mark.skipif(not ENGINE_CLI.is_file(), reason=f"the engine is not written yet ({ENGINE_CLI} missing)"),
    pytest.mark.skipif(not (SAMPLE_SCENE / "cameras_sphere.npz").is_file(),
                       reason=f"sample scene not generated yet ({SAMPLE_SCENE})"),
]

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


@pytest.fixture
def bpy(tmp_path):
    import bpy as _bpy

    import neus_blender_addon as addon
    from neus_blender_addon import reconstruct

    _bpy.ops.wm.read_factory_settings(use_empty=True)
    addon.register()
    configure(_bpy.context.scene, tmp_path / "runs")
    yield _bpy
    addon.unregister()  # also kills an engine a failed test left running
    assert not reconstruct.is_running()


def pump(until, timeout: float = 300.0, every: float = 0.1) -> None:
    """Calls the add-on's timer function as Blender's event loop would (timers do not fire in background mode)."""
    import bpy

    from neus_blender_addon import reconstruct

    t0 = time.time()
    while time.time() - t0 < timeout:
        delay = reconstruct.timer_step()
        if delay is None or until(bpy.context.scene.neus):
            return
        time.sleep(every)
    raise AssertionError(f"timed out; state {bpy.context.scene.neus.state} stage {bpy.context.scene.neus.stage}")


def training(st) -> bool:
    return st.stage == "training" and st.step >= 1


def test_file_load_during_a_run_keeps_it_attached(bpy, tmp_path):
    from neus_blender_addon import reconstruct

    s = bpy.context.scene.neus
    s.steps = 100000  # would run for hours
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    run = reconstruct.active_run()
    pump(training)
    bpy.ops.wm.read_homefile()  # File > New: a new file, new scene, the add-on stays registered
    assert bpy.app.timers.is_registered(reconstruct.timer_step)  # the persistent timer survived the load
    assert reconstruct.active_run() is run and run.process.running
    pump(lambda st: st.running and st.step > 0, timeout=60)  # the new file's scene shows the run
    assert bpy.ops.neus.cancel() == {"FINISHED"}  # Cancel still reaches the engine
    pump(lambda st: False, timeout=60)
    assert run.status.state == "cancelled" and not reconstruct.is_running()
    new = bpy.context.scene
    assert new.neus.state == "cancelled" and not new.neus.running
    # A second run starts (no "already running") and lands in the new file.
    configure(new, tmp_path / "runs2")
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    pump(lambda st: False)
    assert new.neus.state == "done", new.neus.last_error
    assert new.neus.result_object in bpy.data.objects


CLEAN_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import bpy
    import neus_blender_addon as addon
    from neus_blender_addon import reconstruct
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon.register()
    s = bpy.context.scene.neus
    s.data_dir, s.output_dir, s.preset, s.device, s.steps = sys.argv[1], sys.argv[2], "preview", "cpu", 100000
    assert bpy.ops.neus.reconstruct(mode="ASYNC") == {"FINISHED"}
    print("ENGINE_PID", reconstruct.active_run().process.pid, flush=True)
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
