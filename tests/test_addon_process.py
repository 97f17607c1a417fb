"""engine_process with real subprocesses: a small script that speaks the progress protocol.

The script is a stand-in for the engine only where the process handling is under test (pipes, JSON lines, exit
codes, SIGINT / STOP file / escalation); the reconstruct tests in Blender use the real engine.
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest
from addon_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

from neus_blender_addon.core import engine_process as ep
from neus_blender_addon.core.errors import AddonError

pytestmark = pytest.mark.serial  # silence limits of half a second: run alone (conftest.py)

FAKE_ENGINE = textwrap.dedent(
    r'''
    import json, os, signal, sys, time
    mode, run_dir = sys.argv[1], sys.argv[2]
    def emit(event, **kw):
        print(json.dumps({"event": event, "time": time.time(), **kw}), flush=True)
    stop = {"flag": False}
    def on_signal(signum, frame):
        stop["flag"] = True
    if mode in ("stubborn", "hang", "stdin"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, on_signal)
    print("engine log line on stderr", file=sys.stderr, flush=True)
    emit("start", version=1, command="fit", device="cpu", device_name="CPU", total_steps=100, start_step=0)
    emit("stage", stage="training")
    if mode == "ok":
        print("not json at all", flush=True)
        for step in (10, 50, 100):
            emit("progress", step=step, total=100, loss=1.0 / step, psnr=20.0, eta_s=1.0)
        mesh = os.path.join(run_dir, "mesh.ply")
        emit("done", mesh=mesh, files={"mesh.ply": mesh}, steps=100)
        sys.exit(0)
    if mode == "crash":
        print("Traceback (most recent call last):\nRuntimeError: boom in the engine", file=sys.stderr, flush=True)
        sys.exit(1)
    if mode == "badinput":
        emit("error", kind="input", message="/data: dataset folder does not exist")
        sys.exit(2)
    if mode == "badevent":
        print(json.dumps({"event": "progress", "step": 3}), flush=True)
        sys.exit(0)
    if mode == "hang":  # says nothing more, ever
        time.sleep(600)
    if mode == "stdin":  # what the engine's liveness watch relies on: Blender's pid, and stdin a pipe kept open
        import stat
        emit("probe", parent=os.environ.get("NEUS_PARENT_PID"), stdin_pipe=stat.S_ISFIFO(os.fstat(0).st_mode))
        for line in sys.stdin:
            if line.strip() == "stop":
                emit("cancelled", step=0, checkpoint=None, mesh=None, reason="request")
                sys.exit(130)
        emit("log", message="stdin closed")
        sys.exit(1)
    step = 0
    while True:  # "slow" and "stubborn": train until told to stop
        step += 1
        emit("progress", step=step, total=100000, loss=0.1, psnr=None, eta_s=99.0)
        if mode == "slow" and (stop["flag"] or os.path.exists(os.path.join(run_dir, "STOP"))):
            emit("cancelled", step=step, checkpoint=os.path.join(run_dir, "checkpoints", "last.ckpt"), mesh=None)
            sys.exit(130)
        time.sleep(0.02)
    '''
)


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    run_dir = tmp_path / "run"

    def make(mode: str, **kw) -> ep.EngineProcess:
        return ep.EngineProcess([sys.executable, str(script), mode, str(run_dir)], run_dir, cwd=tmp_path, **kw)

    return make


def drain(proc: ep.EngineProcess, timeout: float = 20.0) -> list[dict]:
    events, t0 = [], time.time()
    while time.time() - t0 < timeout:
        ev = proc.next_event(timeout=0.5)
        if ev is None:
            continue
        events.append(ev)
        if ev["event"] == "exit":
            return events
    raise AssertionError(f"no exit event within {timeout} s; got {[e['event'] for e in events]}")


def test_successful_run_events_and_log(fake):
    proc = fake("ok")
    assert proc.state == ep.IDLE
    proc.start()
    events = drain(proc)
    names = [e["event"] for e in events]
    assert names == ["start", "stage", "log", "progress", "progress", "progress", "done", "exit"]
    assert events[2]["message"] == "not json at all"
    assert events[-1] == {**events[-1], "returncode": 0, "state": ep.DONE}
    assert proc.state == ep.DONE and proc.returncode == 0
    assert "engine log line on stderr" in proc.log_path.read_text()  # stderr went to RUN_DIR's log, not stdout
    assert proc.log_path.parent == proc.run_dir
    with pytest.raises(AddonError, match="started once"):
        proc.start()


def test_crash_reports_last_stderr_line(fake):
    proc = fake("crash")
    proc.start()
    events = drain(proc)
    assert events[-1]["state"] == ep.FAILED and events[-1]["returncode"] == 1
    msg = proc.failure_message()
    assert "exit code 1" in msg and "RuntimeError: boom in the engine" in msg


def test_bad_input_error_event(fake):
    proc = fake("badinput")
    proc.start()
    events = drain(proc)
    err = next(e for e in events if e["event"] == "error")
    assert err["kind"] == "input" and "does not exist" in err["message"]
    assert proc.state == ep.FAILED and proc.returncode == 2


def test_protocol_violation_becomes_error_event(fake):
    proc = fake("badevent")
    proc.start()
    events = drain(proc)
    err = next(e for e in events if e["event"] == "error")
    assert err["kind"] == "protocol" and "lacks field" in err["message"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_cancel_with_sigint(fake):
    proc = fake("slow")
    proc.start()
    assert proc.next_event(5)["event"] == "start"
    t0 = time.time()
    proc.cancel()
    assert (proc.run_dir / ep.STOP_FILE).exists() or proc.state != ep.RUNNING
    events = drain(proc)
    assert time.time() - t0 < 5.0
    assert events[-2]["event"] == "cancelled"
    assert events[-1]["returncode"] == 130 and proc.state == ep.CANCELLED
    assert not (proc.run_dir / ep.STOP_FILE).exists()  # cleaned up so a resume does not stop at once


def test_stop_file_alone_stops_the_engine(fake, tmp_path):
    # Windows has no SIGINT for the engine: the STOP file must be enough. Write it ourselves, no signal.
    proc = fake("slow")
    proc.start()
    assert proc.next_event(5)["event"] == "start"
    (proc.run_dir / ep.STOP_FILE).touch()
    events = drain(proc)
    assert events[-1]["returncode"] == 130 and events[-1]["state"] == ep.CANCELLED


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_cancel_never_kills_an_engine_that_keeps_talking(fake):
    # "stubborn" ignores every stop request but reports ten times a second: silence, not time, decides.
    proc = fake("stubborn", silence_s=0.5)
    proc.start()
    assert proc.next_event(5)["event"] == "start"
    proc.cancel()
    time.sleep(2.0)  # four times the silence limit
    assert proc.running and proc.killed_for == "" and proc.silent_for() < 0.5
    proc.kill_now()
    assert drain(proc)[-1]["returncode"] == -9 and proc.state == ep.CANCELLED


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_cancel_kills_a_silent_engine_after_the_silence_limit(fake):
    proc = fake("hang", silence_s=1.0)  # ignores SIGINT and SIGTERM, says nothing after its start
    proc.start()
    assert proc.next_event(5)["event"] == "start"
    time.sleep(1.5)  # silent before the cancel too: the cancel restarts the clock
    assert proc.not_responding
    t0 = time.time()
    proc.cancel()
    events = drain(proc)
    assert 1.0 <= time.time() - t0 < 2.0
    assert events[-1] == {**events[-1], "returncode": -9, "state": ep.CANCELLED,
                          "killed": "the engine sent nothing for 1 s after Cancel"}


def test_engine_gets_blenders_pid_and_a_stdin_pipe(fake):
    proc = fake("stdin")
    proc.start()
    probe = next(e for e in iter(lambda: proc.next_event(10), None) if e["event"] == "probe")
    assert probe["parent"] == str(os.getpid()) and probe["stdin_pipe"] is True
    time.sleep(0.5)
    assert proc.running  # stdin stays open while the add-on holds the process
    proc.cancel()  # SIGINT and SIGTERM are ignored here: only the "stop" line ends it
    events = drain(proc)
    assert events[-2]["event"] == "cancelled" and events[-1]["returncode"] == 130


def test_stale_stop_file_is_removed_before_start(fake):
    proc = fake("ok")
    proc.run_dir.mkdir(parents=True)
    (proc.run_dir / ep.STOP_FILE).touch()
    proc.start()
    assert drain(proc)[-1]["state"] == ep.DONE


def test_missing_interpreter_cannot_start(tmp_path):
    proc = ep.EngineProcess([str(tmp_path / "no" / "python"), "-m", "engine"], tmp_path / "run")
    with pytest.raises(ep.EngineNotFoundError, match="cannot start the engine"):
        proc.start()


# -- finding the interpreter -------------------------------------------------------------------------------
def make_fake_repo(root: Path) -> Path:
    (root / "engine").mkdir(parents=True)
    (root / "engine" / "__init__.py").write_text("")
    py = root / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\n")
    py.chmod(py.stat().st_mode | stat.S_IXUSR)
    return py


def test_find_engine_python_order(tmp_path):
    py = make_fake_repo(tmp_path / "repo")
    other = make_fake_repo(tmp_path / "other")
    # auto-detect: the repo's .venv, with the repo as working directory
    loc = ep.find_engine_python("", env={}, addon_root=tmp_path / "repo")
    assert loc.python == py and loc.source == "auto-detected" and loc.repo_root == tmp_path / "repo"
    # the environment variable beats auto-detection
    loc = ep.find_engine_python("", env={ep.ENV_VAR: str(other)}, addon_root=tmp_path / "repo")
    assert loc.python == other and loc.source == "environment" and loc.repo_root == tmp_path / "other"
    # the preference beats both
    loc = ep.find_engine_python(str(py), env={ep.ENV_VAR: str(other)}, addon_root=tmp_path / "repo")
    assert loc.python == py and loc.source == "preferences"


def test_find_engine_python_errors_are_explicit(tmp_path):
    with pytest.raises(ep.EngineNotFoundError) as exc:
        ep.find_engine_python("", env={}, addon_root=None)
    assert ep.ENV_VAR in str(exc.value) and "Engine Python" in str(exc.value)
    missing = tmp_path / "nowhere" / "python"
    with pytest.raises(ep.EngineNotFoundError, match=r"does not exist") as exc:
        ep.find_engine_python(str(missing), env={})
    assert str(missing) in str(exc.value) and "preferences" in str(exc.value)
    with pytest.raises(ep.EngineNotFoundError, match=r"\$NEUS_ENGINE_PYTHON"):
        ep.find_engine_python("", env={ep.ENV_VAR: str(missing)})
    with pytest.raises(ep.EngineNotFoundError, match="is a folder"):
        ep.find_engine_python(str(tmp_path), env={})


def test_this_checkout_is_auto_detected():
    root = ep.addon_repo_root()
    assert root == REPO
    if (REPO / ".venv").is_dir():
        loc = ep.find_engine_python("", env={})
        assert loc.repo_root == REPO and loc.python.parent.parent.name == ".venv"


def test_explain_failure_messages():
    msg = ep.explain_failure(1, ["Traceback ...", "ModuleNotFoundError: No module named 'engine'"], "/x/python")
    assert "not importable by /x/python" in msg and "pip install -e ." in msg
    msg = ep.explain_failure(1, ["ModuleNotFoundError: No module named 'torch'"], "/x/python")
    assert "lacks a package" in msg and "torch" in msg


def test_build_fit_command():
    cmd = ep.build_fit_command("/py", "/data", "/run", preset="preview", device="cpu", steps=500)
    assert cmd[:5] == ["/py", "-m", "engine", "fit", str(Path("/data").absolute())]
    assert cmd[cmd.index("--out") + 1] == str(Path("/run").absolute())
    assert cmd[cmd.index("--progress") + 1] == "jsonl" and cmd[cmd.index("--steps") + 1] == "500"
    assert "--steps" not in ep.build_fit_command("/py", "/d", "/r", steps=0)
    with pytest.raises(AddonError, match="unknown preset"):
        ep.build_fit_command("/py", "/d", "/r", preset="ultra")
    with pytest.raises(AddonError, match="unknown device"):
        ep.build_fit_command("/py", "/d", "/r", device="tpu")
