"""Shared helpers for tests that run the engine's command line as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from paths import DTU, REPO, SAMPLE  # noqa: F401  (re-exported for the engine tests)

# Small, fast settings for smoke runs on the bundled scene.
TINY = ["--set", "export.resolution=48", "--set", "export.coarse_resolution=24",
        "--set", "train.checkpoint_every_steps=5"]


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_engine(*args: str, timeout: float = 600, failpoints: str | None = None) -> tuple[int, list[dict], str]:
    """Runs ``python -m engine ARGS`` (with ``NEUS_FAILPOINTS=failpoints`` when given); returns (exit code, parsed
    stdout JSON lines, stderr)."""
    env = engine_env()
    if failpoints is not None:
        env["NEUS_FAILPOINTS"] = failpoints
    proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, parse_events(proc.stdout), proc.stderr


def start_engine(*args: str, env: dict[str, str] | None = None, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """Starts ``python -m engine ARGS`` with text pipes on stdout and stderr, for tests that act during a run."""
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=REPO, env=env or engine_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin, text=True)


def lines_until_step(proc: subprocess.Popen, step: int) -> list[str]:
    """Reads ``proc``'s protocol lines until a ``progress`` event reaches ``step`` or the stream ends; returns the
    lines read (hand them to :func:`parse_events` with the rest of the output)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        event = json.loads(line)
        if event["event"] == "progress" and event["step"] >= step:
            break
    return lines


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
