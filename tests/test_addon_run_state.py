"""The bpy-free run state machine (``neus_blender_addon.core.run_state``) and run folders, with plain pytest: engine
events as the engine prints them (``engine/PROTOCOL.md``), real mesh files read by the add-on's PLY reader."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from addon_helpers import grid_mesh, write_ply_binary

from neus_blender_addon.core import run_files, run_state
from neus_blender_addon.core.engine_process import EngineLocation
from neus_blender_addon.core.errors import AddonError
from neus_blender_addon.core.ply_io import PlyError, read_ply


class PlyHost:
    """A host that imports meshes by reading them with the add-on's PLY reader (what the bpy layer does first)."""

    def __init__(self) -> None:
        self.objects: dict[str, int] = {}  # name -> vertex count
        self.lines: list[str] = []
        self.cleared = 0

    def import_mesh(self, run, path: str, role: str) -> str:
        name = run.preview_name if role == "preview" else run.result_name
        try:
            self.objects[name] = len(read_ply(path).vertices)
        except PlyError as e:  # as blender_mesh.import_mesh: the host raises AddonError only
            raise AddonError(str(e)) from e
        return name

    def clear_preview(self, run) -> None:
        self.cleared += 1
        self.objects.pop(run.preview_name, None)

    def say(self, run, text: str) -> None:
        self.lines.append(text)


def make_run(tmp_path: Path, **kw) -> run_state.Run:
    request = run_state.RunRequest("Scene", tmp_path / "data", tmp_path / "runs" / "run_001", "scan",
                                   EngineLocation(Path(sys.executable), "test", None),
                                   result_name="scan NeuS run_001", **kw)
    return run_state.new_run(request)


def mesh_file(path: Path, nx: int = 6) -> Path:
    verts, faces = grid_mesh(nx, 5)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_ply_binary(path, verts, faces, np.full((len(verts), 3), 200, np.uint8))
    return path


def feed(run, host, *events) -> None:
    for e in events:
        run.handle_event(host, e)


START = {"event": "start", "version": 1, "device": "cpu", "total_steps": 10, "start_step": 0}


def test_next_run_dir_numbers_runs(tmp_path):
    assert run_files.next_run_dir(tmp_path / "none") == tmp_path / "none" / "run_001"
    for name in ("run_001", "run_007", "run_x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "run_020").write_text("a file, not a run, still takes the number")
    assert run_files.next_run_dir(tmp_path) == tmp_path / "run_021"


def test_done_run_imports_result_and_clears_preview(tmp_path):
    run, host = make_run(tmp_path, show_preview=True), PlyHost()
    preview = mesh_file(tmp_path / "runs" / "run_001" / "preview" / "p.ply", nx=4)
    mesh = mesh_file(tmp_path / "runs" / "run_001" / "mesh.ply")
    feed(run, host, START, {"event": "stage", "stage": "training"},
         {"event": "progress", "step": 5, "total": 10, "loss": 0.1},
         {"event": "preview_mesh", "step": 5, "path": str(preview)})
    assert host.objects == {"scan NeuS run_001 preview": 20} and run.status.step == 5 and not run.finished
    feed(run, host, {"event": "done", "mesh": str(mesh), "files": {"ply": str(mesh)}},
         {"event": "exit", "returncode": 0, "state": "done"})
    assert run.finished and run.status.state == "done" and run.result_object == "scan NeuS run_001"
    assert host.objects == {"scan NeuS run_001": 30} and host.cleared == 1


def test_bad_preview_does_not_fail_the_run(tmp_path):
    run, host = make_run(tmp_path), PlyHost()
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nend")
    feed(run, host, START, {"event": "preview_mesh", "step": 1, "path": str(bad)})
    assert not run.finished and any("preview not shown" in ln and "bad.ply" in ln for ln in host.lines)


def test_cancel_with_exported_mesh_imports_it(tmp_path):
    run, host = make_run(tmp_path), PlyHost()
    mesh = mesh_file(tmp_path / "runs" / "run_001" / "mesh.ply")
    feed(run, host, START, {"event": "cancelled", "step": 3, "checkpoint": "x", "mesh": str(mesh)},
         {"event": "exit", "returncode": 130, "state": "cancelled"})
    assert run.status.state == "cancelled" and run.imported_on_cancel and run.result_object == "scan NeuS run_001"
    assert "imported the current mesh" in host.lines[-1]


def test_cancel_without_mesh_and_done_without_mesh(tmp_path):
    run, host = make_run(tmp_path), PlyHost()
    feed(run, host, START, {"event": "cancelled", "step": 3, "checkpoint": "x", "mesh": None},
         {"event": "exit", "returncode": 130, "state": "cancelled"})
    assert run.status.state == "cancelled" and not run.imported_on_cancel and host.objects == {}
    run, host = make_run(tmp_path), PlyHost()
    missing = tmp_path / "runs" / "run_001" / "gone.ply"
    feed(run, host, START, {"event": "done", "mesh": str(missing), "files": {}},
         {"event": "exit", "returncode": 0, "state": "done"})
    assert run.status.state == "failed" and "wrote no mesh" in run.status.last_error and str(missing) in \
        run.status.last_error


def test_engine_error_ends_failed_with_its_message(tmp_path):
    run, host = make_run(tmp_path), PlyHost()
    feed(run, host, START, {"event": "error", "kind": "input", "message": "/d/x.png: image file is empty"},
         {"event": "exit", "returncode": 2, "state": "failed"})
    assert run.finished and run.status.state == "failed"
    assert run.status.last_error == "input error: /d/x.png: image file is empty"
    assert host.lines[-1] == "[neus] failed: input error: /d/x.png: image file is empty"


def test_unreadable_result_fails_the_run(tmp_path):
    run, host = make_run(tmp_path), PlyHost()
    bad = tmp_path / "runs" / "run_001" / "mesh.ply"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a ply")
    feed(run, host, START, {"event": "done", "mesh": str(bad), "files": {}},
         {"event": "exit", "returncode": 0, "state": "done"})
    assert run.status.state == "failed" and run.status.last_error.startswith("cannot import the result: ")


def test_commands_for_new_and_resumed_runs(tmp_path):
    run = make_run(tmp_path, steps=50, settings=["train.lr=0.01"])
    argv = run.process.argv
    assert "--export-on-cancel" in argv and "--resume" not in argv
    assert argv[argv.index("--set") + 1] == "train.lr=0.01" and argv[argv.index("--steps") + 1] == "50"
    assert argv[argv.index("--out") + 1] == str((tmp_path / "runs" / "run_001").absolute())
    resumed = make_run(tmp_path, resume=True, export_on_cancel=False, settings=["train.lr=0.01"])
    argv = resumed.process.argv
    assert "--resume" in argv and "--export-on-cancel" not in argv
    assert "--set" not in argv  # the engine resumes with the run's saved config
    with pytest.raises(AddonError, match="unknown preset"):
        make_run(tmp_path, preset="ultra")


def test_resume_problem(tmp_path):
    assert "no checkpoints/last.ckpt" in run_state.resume_problem(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert "no config.yaml" in run_state.resume_problem(tmp_path)
    (tmp_path / "config.yaml").write_text("a: 1\n")
    assert run_state.resume_problem(tmp_path) is None


def test_log_tail_follows_the_engine_log(tmp_path):
    run = make_run(tmp_path)
    log = run.process.log_path
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert run.refresh_log_tail() and run.log_tail == [f"line {i}" for i in range(4, 10)]
    assert not run.refresh_log_tail()  # unchanged file: nothing to redraw
    with log.open("a") as f:
        f.write("error: the last line\n")
    assert run.refresh_log_tail() and run.log_tail[-1] == "error: the last line"


@pytest.mark.parametrize("cancelled,exit_extra,why", [
    ({"step": 4, "checkpoint": "/r/last.ckpt", "mesh": None, "reason": "request", "export": "cancelled"}, {},
     "no mesh on cancel: a second Cancel stopped the export (Export in the engine makes it later)"),
    ({"step": 0, "checkpoint": None, "mesh": None, "reason": "request", "export": None}, {},
     "no mesh on cancel: the run was cancelled before training began"),
    ({"step": 4, "checkpoint": "/r/last.ckpt", "mesh": None, "reason": "stdin closed", "export": None}, {},
     "no mesh on cancel: the engine stopped on its own (stdin closed)"),
    (None, {"killed": "the engine sent nothing for 30 s after Cancel"},
     "no mesh on cancel: the engine sent nothing for 30 s after Cancel"),
])
def test_export_on_cancel_without_a_mesh_says_why(tmp_path, cancelled, exit_extra, why):
    run, host = make_run(tmp_path), PlyHost()
    assert run.request.export_on_cancel  # on by default
    feed(run, host, START, {"event": "progress", "step": 4, "total": 10, "loss": 0.1})
    if cancelled is not None:
        feed(run, host, {"event": "cancelled", **cancelled})
    feed(run, host, {"event": "exit", "returncode": 130 if cancelled else -9, "state": "cancelled", **exit_extra})
    assert run.status.state == "cancelled" and not run.imported_on_cancel and host.objects == {}
    assert run.status.last_error == why
    assert host.lines[-1] == f"[neus] cancelled ({why})"


def test_cancel_without_export_on_cancel_stays_quiet(tmp_path):
    run, host = make_run(tmp_path, export_on_cancel=False), PlyHost()
    feed(run, host, START, {"event": "cancelled", "step": 4, "checkpoint": "/r/last.ckpt", "mesh": None},
         {"event": "exit", "returncode": 130, "state": "cancelled"})
    assert run.status.state == "cancelled" and run.status.last_error == "" and host.lines[-1] == "[neus] cancelled"
