"""Liveness (PROTOCOL.md, "Liveness", "Cancel and resume"): every way to cancel ends `fit` and `solve` within 2.5 s,
heartbeats in a silent phase, the engine ending itself when its parent dies or its stdin pipe closes, and a cancel
that stops an export within a chunk. Real processes and signals throughout."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import trimesh
from engine_helpers import (
    REPO,
    SAMPLE,
    STOP_WAYS,
    TINY,
    Ending,
    engine_env,
    group_gone,
    lines_until_step,
    parse_events,
    read_until,
    run_engine,
    start_engine,
    stop_and_wait,
    training_progress,
)
from paths import needs_sample

from engine.atomic_files import TMP_PREFIX
from engine.failpoints import SLEEP_S

pytestmark = [needs_sample, pytest.mark.serial]  # times the engine: run alone (conftest.py)
FIT = ("fit", str(SAMPLE), "--progress", "jsonl", *TINY)
CANCEL_WITHIN_S = 2.5  # issue 20: from the request to the `cancelled` event
# ... then to the exit (the relay's last line, the interpreter's end): measured 0.1-1.3 s on the shared 2-core CPU at
# a load of 7-8
EXIT_AFTER_EVENT_S = 2.0


def temporaries(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"{TMP_PREFIX}.*"))


def assert_cancelled_in_time(end: Ending, **fields) -> dict:
    """`cancelled` within CANCEL_WITHIN_S of the request, with ``fields``, as the last event; exit 130 soon after.
    Returns the event."""
    assert end.code == 130, end.stderr[-3000:]
    assert end.event_s < CANCEL_WITHIN_S, end.timeline()
    assert end.exit_s < end.event_s + EXIT_AFTER_EVENT_S, end.timeline()
    cancelled = end.final
    assert cancelled["event"] == "cancelled" and {k: cancelled[k] for k in fields} == fields, cancelled
    return cancelled


def test_each_way_to_cancel_fit_ends_it_within_2_5_s_and_resume_goes_on(tmp_path):
    """One run folder, stopped mid-training by SIGINT, then (resumed each time) SIGTERM, a `stop` line and the STOP
    file: each ends with `cancelled` and exit 130 within 2.5 s, `last.ckpt` at the cancelled step, no mesh; the
    next ``--resume`` starts there. A last resume (the stale STOP file removed) exports on cancel once."""
    run = tmp_path / "run"
    step = 0
    for how in STOP_WAYS:
        proc = start_engine(*FIT, "--out", str(run), "--steps", "400", *(("--resume",) if step else ()),
                            stdin=subprocess.PIPE if how == "stop_line" else subprocess.DEVNULL)
        lines = lines_until_step(proc, step + 2)
        end = stop_and_wait(proc, lines, how, stop_file=run / "STOP")
        # Measured 0.12-0.55 s to `cancelled` (the step under way, the checkpoint), 0.37-1.5 s to the exit, on the
        # shared 2-core CPU.
        cancelled = assert_cancelled_in_time(end, reason="request", export=None, mesh=None)
        assert next(e for e in end.events if e["event"] == "start")["start_step"] == step, how
        assert step + 2 <= cancelled["step"] < 400, (how, cancelled)
        ckpt = torch.load(cancelled["checkpoint"], map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == cancelled["step"], how
        assert not (run / "mesh.ply").exists() and temporaries(run) == []
        step = cancelled["step"]

    # Resumed once more with Export on Cancel, and asked to stop three ways at once, as the add-on does (STOP file,
    # `stop` line, SIGINT): that is one request, so the export runs to the end instead of being stopped by the copies.
    proc = start_engine(*FIT, "--out", str(run), "--steps", "400", "--resume", "--export-on-cancel",
                        "--set", "train.lr=0.5", stdin=subprocess.PIPE)
    lines = lines_until_step(proc, step + 2)
    assert not (run / "STOP").exists()  # the stale one, removed as the run started
    (run / "STOP").touch()
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    end = stop_and_wait(proc, lines, "sigint")
    assert end.code == 130, end.stderr[-3000:]
    assert "--set and --config are ignored" in end.stderr  # the saved config.yaml wins, and the user is told so
    assert next(e for e in end.events if e["event"] == "start")["start_step"] == step
    assert next(e for e in end.events if training_progress(e))["step"] == step + 1
    cancelled = end.final
    assert cancelled["event"] == "cancelled" and (cancelled["reason"], cancelled["export"]) == ("request", "done")
    assert cancelled["mesh"] == str((run / "mesh.ply").resolve()) and (run / "mesh.ply").is_file()
    assert not (run / "STOP").exists() and temporaries(run) == []


@pytest.fixture(scope="module")
def three_photos(tmp_path_factory):
    photos = tmp_path_factory.mktemp("solve") / "photos"
    photos.mkdir()
    for png in sorted((SAMPLE / "image").glob("*.png"))[:3]:
        shutil.copy(png, photos / png.name)
    return photos


@pytest.mark.skipif(os.name != "posix", reason="process groups")
@pytest.mark.parametrize("how", STOP_WAYS)
def test_each_way_to_cancel_solve_in_mapping_ends_it_within_2_5_s(tmp_path, three_photos, how):
    """``sleep@mapping``: as mapping begins, solve's pycolmap child sleeps 7 s in native code holding its interpreter
    lock, as pycolmap's mapper does. The request still ends the solve within 2.5 s (the engine ends the child):
    `cancelled`, exit 130, the whole process group gone, nothing written, no crash report in the log (importing
    pycolmap installs glog's SIGTERM handler, which used to kill the engine on SIGTERM with a stack trace)."""
    out = tmp_path / "data"
    proc = start_engine("solve", str(three_photos), "--out", str(out), "--progress", "jsonl", "--max-image-size", "200",
                        env={**engine_env(), "NEUS_FAILPOINTS": "sleep@mapping"}, new_group=True,
                        stdin=subprocess.PIPE if how == "stop_line" else subprocess.DEVNULL)
    lines = read_until(proc, lambda e: e["event"] == "stage" and e["stage"] == "mapping")
    end = stop_and_wait(proc, lines, how, stop_file=out / "STOP")
    # Measured 0.01-0.15 s to `cancelled` (the engine polls every 0.1 s, then ends the child) on the shared 2-core CPU.
    assert_cancelled_in_time(end, reason="request", step=0, checkpoint=None, mesh=None, export=None)
    assert [e["stage"] for e in end.events if e["event"] == "stage"][-1] == "mapping"  # stopped inside mapping
    assert group_gone(proc.pid, 1.0), "the pycolmap child outlived the cancelled solve"
    assert not out.exists() or [p.name for p in out.iterdir()] == ["STOP"]
    assert not list(tmp_path.glob(".neus_solve.*"))  # the staging folder is removed
    assert "Aborted at" not in end.stderr and "Traceback" not in end.stderr, end.stderr[-3000:]


def test_heartbeat_during_a_silent_phase(tmp_path, smoke_run):
    """``sleep@extracting`` spends 7 s in a native call that holds the interpreter lock as extraction begins (as
    xatlas does; no thread of the engine could write meanwhile): the relay fills the silence every 3 s, naming the
    stage, and never splits a line (every line parses)."""
    run = smoke_run.check().copy_to(tmp_path / "run")
    code, events, err = run_engine("export", str(run), "--progress", "jsonl", "--color", "field",
                                   failpoints="sleep@extracting", timeout=300)
    assert code == 0, err
    start = next(i for i, e in enumerate(events) if e["event"] == "stage" and e["stage"] == "extracting")
    beats = []
    for event in events[start + 1:]:
        if event["event"] != "heartbeat":
            break
        beats.append(event)
    # 7 s of silence: beats at 3 and 6 s (measured 3.1-3.2 and 6.2-6.4 s on a busy 2-core CPU). A third one follows
    # when the extraction after the sleep sends its first count more than 3 s later (seen at a load of 8 on 2 cores).
    assert len([b for b in beats if b["elapsed_s"] < SLEEP_S]) == 2, beats
    assert all(b["stage"] == "extracting" for b in beats)
    assert 3.0 <= beats[0]["elapsed_s"] < 4.0 and 6.0 <= beats[1]["elapsed_s"] < 7.0, beats
    assert all(2.9 <= b["time"] - a["time"] < 4.0 for a, b in zip(beats, beats[1:], strict=False))
    print("heartbeats", [b["elapsed_s"] for b in beats])
    assert events[-1]["event"] == "done"  # and nothing after the final event


def test_cancel_during_export_stops_within_a_chunk_and_writes_nothing(tmp_path, smoke_run):
    """SIGINT while ``export`` evaluates a 256^3 grid (about 10 s on a CPU): `cancelled` and exit 130 within 2.5 s;
    the earlier mesh and normalization.json are byte-identical and no temporary is left."""
    run = smoke_run.check().copy_to(tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in ("mesh.ply", "normalization.json")}
    proc = start_engine("export", str(run), "--progress", "jsonl", "--resolution", "256", "--color", "field")
    lines = read_until(proc, lambda e: e["event"] == "progress" and e.get("stage") == "extracting")
    end = stop_and_wait(proc, lines)  # measured 0.7 s to the exit on a busy 2-core CPU
    assert_cancelled_in_time(end, reason="request", export="cancelled", mesh=None)
    assert not [e for e in end.events if e["event"] == "stage" and e["stage"] == "exporting"]
    assert {name: (run / name).read_bytes() for name in before} == before
    assert temporaries(run) == []


def test_cancel_during_the_uv_unwrap_keeps_the_new_mesh_and_starts_no_textured_file(tmp_path, smoke_run):
    """SIGINT 2 s into ``texturing``, inside xatlas' unwrap (about 20 s on a CPU, holding the interpreter lock: it runs
    in a forked child that the export kills): `cancelled` within 2.5 s naming the new mesh.ply, which is whole; no
    textured file exists and no temporary is left."""
    run = smoke_run.check().copy_to(tmp_path / "run")
    faces_before = len(trimesh.load(run / "mesh.ply", process=False).faces)
    proc = start_engine("export", str(run), "--progress", "jsonl", "--texture", "--resolution", "128",
                        "--texture-size", "2048", "--color", "field")
    lines = read_until(proc, lambda e: e["event"] == "stage" and e["stage"] == "texturing")
    time.sleep(2.0)
    end = stop_and_wait(proc, lines)
    assert_cancelled_in_time(end, export="cancelled", mesh=str((run / "mesh.ply").resolve()))
    # The new 128^3 mesh, not the run's 48^3 one (measured 56188 faces against 7648).
    assert len(trimesh.load(run / "mesh.ply", process=False).faces) > 5 * faces_before
    assert not list(run.glob("mesh_textured*")) and temporaries(run) == []


def test_second_cancel_stops_export_on_cancel(tmp_path):
    """``--export-on-cancel``: the first SIGINT saves the checkpoint and starts the export; a second SIGINT during
    the export's extraction stops it within 2.5 s with a warning, `cancelled` (export: cancelled) and no mesh."""
    run = tmp_path / "run"
    proc = start_engine(*FIT, "--out", str(run), "--steps", "400", "--export-on-cancel",
                        "--set", "export.resolution=256", "--set", "export.color=field")
    lines = lines_until_step(proc, 3)
    proc.send_signal(signal.SIGINT)
    # The export reports its first count after a second, past the 1 s in which a copy of the first request counts
    # as that request (the add-on sends a signal, a stop line and the STOP file at once).
    lines += read_until(proc, lambda e: e["event"] == "progress" and e.get("stage") == "extracting")
    end = stop_and_wait(proc, lines)
    cancelled = assert_cancelled_in_time(end, reason="request", export="cancelled", mesh=None)
    warning = end.events[-2]
    assert warning["event"] == "warning" and "second cancel" in warning["message"]
    assert 3 <= cancelled["step"] < 400
    assert not (run / "mesh.ply").exists() and temporaries(run) == []
    ckpt = torch.load(cancelled["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == cancelled["step"]


# A parent that starts the engine with NEUS_PARENT_PID, reports the engine's pid, then waits to be killed; above it a
# launcher that adopts the orphaned engine (Linux: PR_SET_CHILD_SUBREAPER) to learn its exit code.
_PARENT = """
import os, subprocess, sys, time
env = dict(os.environ, NEUS_PARENT_PID=str(os.getpid()))
with open(sys.argv[1], "w") as out, open(sys.argv[2], "w") as err:
    engine = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
print(engine.pid, flush=True)
time.sleep(600)
"""
_LAUNCHER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans below this process come to it
parent = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], stdout=subprocess.PIPE, text=True)
engine_pid = int(parent.stdout.readline())
print(parent.pid, engine_pid, flush=True)
parent.wait()
print(os.waitstatus_to_exitcode(os.waitpid(engine_pid, 0)[1]), flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the test adopts the orphan with a Linux prctl")
def test_engine_ends_itself_when_its_parent_dies_or_its_stdin_closes(tmp_path):
    """The parent (a real process) is SIGKILLed mid-training: the engine notices within a poll, saves its checkpoint
    and exits 130 with `cancelled` (reason `parent gone`). ``--resume`` continues from it with stdin a pipe; closing
    that pipe stops it the same way (reason `stdin closed`). A stdin from /dev/null (every other test) is ignored."""
    run, events_file, err_file = tmp_path / "run", tmp_path / "events.jsonl", tmp_path / "engine.err"
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, _PARENT, str(events_file), str(err_file), sys.executable, "-m", "engine",
         *FIT, "--out", str(run), "--steps", "400", "--export-on-cancel"],
        cwd=REPO, env=engine_env(), stdout=subprocess.PIPE, text=True)
    parent_pid, _ = (int(x) for x in launcher.stdout.readline().split())
    deadline = time.monotonic() + 300
    while not any(training_progress(e) and e["step"] >= 3 for e in _events(events_file)):
        assert time.monotonic() < deadline and launcher.poll() is None, err_file.read_text()[-3000:]
        time.sleep(0.1)
    os.kill(parent_pid, signal.SIGKILL)
    t0 = time.monotonic()
    code = int(launcher.communicate(timeout=60)[0].split()[-1])
    elapsed = time.monotonic() - t0
    print(f"parent killed -> engine exit {elapsed:.2f} s")
    assert code == 130, err_file.read_text()[-3000:]
    assert elapsed < CANCEL_WITHIN_S, elapsed  # a 0.5 s poll, the step, the checkpoint, the exit: measured 0.65 s
    events = _events(events_file)
    cancelled = events[-1]
    assert cancelled["event"] == "cancelled" and cancelled["reason"] == "parent gone"
    assert cancelled["export"] is None and cancelled["mesh"] is None  # nobody left to import it
    assert torch.load(run / "checkpoints/last.ckpt", map_location="cpu",
                      weights_only=False)["global_step"] == cancelled["step"] >= 3
    assert not (run / "mesh.ply").exists() and temporaries(run) == []

    proc = start_engine(*FIT, "--out", str(run), "--resume", "--steps", "400", stdin=subprocess.PIPE)
    lines = lines_until_step(proc, cancelled["step"] + 2)
    end = stop_and_wait(proc, lines, "close_stdin")
    assert_cancelled_in_time(end, reason="stdin closed")
    start = next(e for e in end.events if e["event"] == "start")
    assert start["start_step"] == cancelled["step"]  # resumed from the parent-gone checkpoint
    assert end.final["step"] >= cancelled["step"] + 2
    assert torch.load(run / "checkpoints/last.ckpt", map_location="cpu",
                      weights_only=False)["global_step"] == end.final["step"]


def test_engine_ends_itself_when_nobody_reads_its_output(tmp_path):
    """The reader of the engine's standard output goes away mid-training (as when Blender crashes): the next event
    finds the pipe broken, and the engine saves its checkpoint and exits 130 instead of failing on the write."""
    run, err_file = tmp_path / "run", tmp_path / "engine.err"
    with open(err_file, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "engine", *FIT, "--out", str(run), "--steps", "400"],
                                cwd=REPO, env=engine_env(), stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, text=True)
        lines_until_step(proc, 3)
        proc.stdout.close()
        t0 = time.monotonic()
        code = proc.wait(timeout=60)
    elapsed = time.monotonic() - t0
    print(f"stdout closed -> exit {elapsed:.2f} s")
    log = err_file.read_text()
    assert code == 130, log[-3000:]
    # Found only by writing: the relay's next write fails, then the engine's (a step later), and training stops at the
    # step after that: measured 1.42, 1.47 and 2.51 s on the shared 2-core CPU.
    assert elapsed < 4.0, elapsed
    assert "standard output closed" in log and "Traceback" not in log
    step = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert step >= 3 and temporaries(run) == [] and not (run / "mesh.ply").exists()


def _events(path) -> list[dict]:
    """The complete lines of a protocol file another process is writing."""
    text = path.read_text() if path.exists() else ""
    return parse_events(text[: text.rfind("\n") + 1])
