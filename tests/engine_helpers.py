"""Shared helpers for tests that run the engine's command line as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from paths import DTU, REPO, SAMPLE  # noqa: F401  (re-exported for the engine tests)

# Small, fast settings for smoke runs on the bundled scene.
TINY = ["--set", "export.resolution=48", "--set", "export.coarse_resolution=24",
        "--set", "train.checkpoint_every_steps=5"]


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_engine(*args: str, timeout: float = 600, failpoints: str | None = None,
               threads: int | None = None) -> tuple[int, list[dict], str]:
    """Runs ``python -m engine ARGS`` (with ``NEUS_FAILPOINTS=failpoints`` and ``NEUS_THREADS=threads`` when given);
    returns (exit code, parsed stdout JSON lines, stderr)."""
    env = engine_env()
    if failpoints is not None:
        env["NEUS_FAILPOINTS"] = failpoints
    if threads is not None:
        env["NEUS_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, parse_events(proc.stdout), proc.stderr


def start_engine(*args: str, env: dict[str, str] | None = None, stdin=subprocess.DEVNULL,
                 new_group: bool = False) -> subprocess.Popen:
    """Starts ``python -m engine ARGS`` with text pipes on stdout and stderr, for tests that act during a run
    (``new_group``: in a process group of its own, whose end :func:`group_gone` tells)."""
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=REPO, env=env or engine_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin, text=True,
                            start_new_session=new_group)


def group_gone(pgid: int, within_s: float) -> bool:
    """Whether every process of the group ``pgid`` (POSIX) ended within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def training_progress(event: dict) -> bool:
    """A training step's ``progress`` event (a long phase's own, e.g. loading's, names its ``stage``)."""
    return event["event"] == "progress" and event.get("stage") is None


def lines_until_step(proc: subprocess.Popen, step: int) -> list[str]:
    """Reads ``proc``'s protocol lines until training's ``progress`` reaches ``step`` or the stream ends; returns
    the lines read (hand them to :func:`parse_events` with the rest of the output)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        event = json.loads(line)
        if training_progress(event) and event["step"] >= step:
            break
    return lines


def read_until(proc: subprocess.Popen, done) -> list[str]:
    """``proc``'s protocol lines up to and including the first event for which ``done(event)`` holds; fails with
    the end of its output when it ends first."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if done(json.loads(line)):
            return lines
    raise AssertionError("the engine ended first: " + "".join(lines[-5:]) + proc.stderr.read()[-3000:])


# The ways to ask a command to stop (PROTOCOL.md, "Cancel and resume"). ``stop_line`` needs the engine started with
# ``stdin=subprocess.PIPE``; ``stop_file`` the folder it watches (RUN_DIR or DATA_DIR).
STOP_WAYS = ("sigint", "sigterm", "stop_line", "stop_file")


def request_stop(proc: subprocess.Popen, how: str, stop_file: Path | None = None) -> None:
    """Asks the running engine to stop in one of ``STOP_WAYS``, or ``close_stdin``: closes its piped standard input
    (as when its parent dies: PROTOCOL.md, "Liveness")."""
    if how == "close_stdin":
        proc.stdin.close()
        proc.stdin = None  # closed: nothing may write or flush it any more
    elif how in ("sigint", "sigterm"):
        proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
    elif how == "stop_line":
        proc.stdin.write("stop\n")
        proc.stdin.flush()
    elif how == "stop_file":
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()
    else:
        raise ValueError(how)


@dataclass
class Ending:
    """How an engine that was asked to stop (or hurt) ended, timed from that moment."""

    code: int
    events: list[dict]  # every protocol line, those read before the request included
    stderr: str
    exit_s: float  # seconds to the process's exit
    event_s: float | None  # seconds to the final event's ``time`` stamp (when the engine wrote it); None: no event
    requested_at: float  # time.time() at the request
    load: tuple[float, float, float]  # the machine's load averages at the end (os.getloadavg), to read a slow end by

    @property
    def final(self) -> dict:
        return self.events[-1]

    def timeline(self, last: int = 8) -> str:
        """The last events, timed from the request (for an assertion's message)."""
        rows = [f"{e['time'] - self.requested_at:+.2f} s {e['event']} {e.get('stage', '')} {e.get('step', '')}"
                for e in self.events[-last:]]
        return f"load {self.load}; exit {self.exit_s:+.2f} s; " + " | ".join(rows)


def wait_for_end(proc: subprocess.Popen, lines: list[str], since: tuple[float, float], timeout: float = 60) -> Ending:
    """Reads the rest of ``proc``'s output (stdout through the file the test read ``lines`` from, stderr beside it,
    so neither pipe fills) and times its end from ``since`` = (time.monotonic(), time.time()) at the request."""
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    exit_s = time.monotonic() - since[0]
    for reader in readers:
        reader.join(timeout)
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    events = parse_events("".join(lines) + "".join(out))
    finals = [e for e in events if e["event"] in ("done", "cancelled", "error")]
    event_s = finals[-1]["time"] - since[1] if finals else None
    load = tuple(round(x, 1) for x in os.getloadavg()) if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return Ending(code, events, "".join(err), exit_s, event_s, since[1], load)


def stop_and_wait(proc: subprocess.Popen, lines: list[str], how: str = "sigint", stop_file: Path | None = None,
                  timeout: float = 60) -> Ending:
    """:func:`request_stop`, then :func:`wait_for_end` timed from the request."""
    since = (time.monotonic(), time.time())
    request_stop(proc, how, stop_file)
    ending = wait_for_end(proc, lines, since, timeout)
    print(f"{how}: cancelled event {ending.event_s:.2f} s, exit {ending.exit_s:.2f} s after the request"
          if ending.event_s is not None else f"{how}: no final event, exit {ending.exit_s:.2f} s")
    return ending


def parse_events(stdout: str) -> list[dict]:
    """Every stdout line must be a JSON object (the protocol allows nothing else on stdout)."""
    events = []
    for line in stdout.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict) and "event" in obj, line
        events.append(obj)
    return events


def write_video(path, frames, fps: float, quality: float | None = None) -> None:
    """A real MP4 of ``frames`` (H, W, 3) uint8 arrays, all one size, through imageio-ffmpeg's ffmpeg (``quality``:
    its 0-10 scale, None for its default)."""
    import imageio_ffmpeg
    import numpy as np

    height, width = frames[0].shape[:2]
    extra = {} if quality is None else {"quality": quality}
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, macro_block_size=4, **extra)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
