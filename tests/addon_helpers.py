"""Shared pieces of the add-on tests: paths, numpy PLY writers, synthetic cameras, a bpy fixture helper.

The PLY writers here are written independently of ``neus_blender_addon.core.ply_io`` (straight from the PLY spec), so a
reader bug cannot hide behind a matching writer bug.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from paths import DTU, NO_DTU_REASON, REPO, needs_sample  # noqa: F401  (re-exported for the add-on tests)
from paths import SAMPLE as SAMPLE_SCENE  # noqa: F401

from datasets.rays import look_at

HAS_BPY = importlib.util.find_spec("bpy") is not None
NO_BPY_REASON = "needs the bpy module (Blender as a Python module; pip install bpy==4.5.*)"

# Module marks: tests inside Blender (bpy), and those that also run the real engine on the sample scene.
IN_BLENDER = [pytest.mark.blender, pytest.mark.skipif(not HAS_BPY, reason=NO_BPY_REASON)]
WITH_ENGINE_RUNS = [*IN_BLENDER, pytest.mark.slow, needs_sample]


# -- driving the add-on's timers ---------------------------------------------------------------------------
def pump(until: Callable | None = None, timeout: float = 300.0, every: float = 0.1, tick: Callable | None = None,
         snapshot: Callable | None = None) -> list:
    """Calls an add-on timer function as Blender's event loop would (timers do not fire in background mode) until
    it unregisters itself (returns None: the job ended) or ``until(scene.neus)`` holds.

    Args:
        tick: the timer function; default ``job_driver.timer_step``, the one timer of both jobs (a reconstruction
            and a camera solve).
        snapshot: called with ``scene.neus`` after each tick; the values are returned.
    """
    import bpy

    from neus_blender_addon import job_driver

    tick = tick or job_driver.timer_step
    seen: list = []
    t0 = time.time()
    while time.time() - t0 < timeout:
        delay = tick()
        s = bpy.context.scene.neus
        if snapshot is not None:
            seen.append(snapshot(s))
        if delay is None or (until is not None and until(s)):
            return seen
        time.sleep(every)
    s = bpy.context.scene.neus
    raise AssertionError(f"timed out after {timeout:.0f} s; state {s.state} stage {s.stage} step {s.step}")


# -- PLY ---------------------------------------------------------------------------------------------------
def write_ply_binary(path: Path, verts: np.ndarray, faces: list[list[int]] | np.ndarray,
                     colors: np.ndarray | None = None, big_endian: bool = False, float_colors: bool = False,
                     extra: bool = True) -> None:
    """Binary PLY: float32 xyz (+ float32 normals and an unrelated ``quality`` property when ``extra``), colours
    as uchar (or float32 in [0, 1]), faces as ``uchar count + int32 indices``, and an extra ``edge`` element that
    readers must skip."""
    bo = ">" if big_endian else "<"
    n = len(verts)
    props = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if extra:
        props += [("nx", "f4"), ("ny", "f4"), ("nz", "f4"), ("quality", "f8")]
    if colors is not None:
        ct = "f4" if float_colors else "u1"
        props += [("red", ct), ("green", ct), ("blue", ct)]
    dt = np.dtype([(name, bo + t) for name, t in props])
    rec = np.zeros(n, dtype=dt)
    rec["x"], rec["y"], rec["z"] = verts[:, 0], verts[:, 1], verts[:, 2]
    if extra:
        nrm = verts / np.maximum(np.linalg.norm(verts, axis=1, keepdims=True), 1e-9)
        rec["nx"], rec["ny"], rec["nz"] = nrm.T
        rec["quality"] = np.arange(n)
    if colors is not None:
        for i, c in enumerate(("red", "green", "blue")):
            rec[c] = colors[:, i]
    names = {"f4": "float", "f8": "double", "u1": "uchar"}
    header = ["ply", f"format binary_{'big' if big_endian else 'little'}_endian 1.0", "comment test file",
              f"element vertex {n}"]
    header += [f"property {names[t]} {name}" for name, t in props]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    if extra:
        header += ["element edge 1", "property int vertex1", "property int vertex2"]
    header.append("end_header")
    body = bytearray(rec.tobytes())
    for f in faces:
        body += np.array([len(f)], dtype="u1").tobytes() + np.asarray(f, dtype=bo + "i4").tobytes()
    if extra:
        body += np.array([0, 1], dtype=bo + "i4").tobytes()
    path.write_bytes(("\n".join(header) + "\n").encode("ascii") + bytes(body))


def write_ply_ascii(path: Path, verts: np.ndarray, faces: list[list[int]], colors: np.ndarray | None = None,
                    alpha: bool = False) -> None:
    """ASCII PLY, one record per line, uchar colours (RGBA when ``alpha``), faces as ``uchar count + uint``."""
    lines = ["ply", "format ascii 1.0", f"element vertex {len(verts)}",
             "property float x", "property float y", "property float z"]
    if colors is not None:
        lines += ["property uchar red", "property uchar green", "property uchar blue"]
        if alpha:
            lines.append("property uchar alpha")
    lines += [f"element face {len(faces)}", "property list uchar uint vertex_index", "end_header"]
    for i, v in enumerate(verts):
        row = [repr(float(x)) for x in v]
        if colors is not None:
            row += [str(int(c)) for c in colors[i][: 4 if alpha else 3]]
        lines.append(" ".join(row))
    for f in faces:
        lines.append(" ".join(str(x) for x in [len(f), *f]))
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def grid_mesh(nx: int = 6, ny: int = 5, quads: bool = False) -> tuple[np.ndarray, list[list[int]]]:
    """A wavy height-field grid: (nx*ny, 3) vertices and triangle (or quad) faces."""
    xs, ys = np.meshgrid(np.linspace(-0.5, 0.5, nx), np.linspace(-0.4, 0.4, ny))
    verts = np.stack([xs.ravel(), ys.ravel(), 0.1 * np.sin(3 * xs.ravel()) * np.cos(2 * ys.ravel())], axis=1)
    faces: list[list[int]] = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a, b, c, d = j * nx + i, j * nx + i + 1, (j + 1) * nx + i + 1, (j + 1) * nx + i
            faces += [[a, b, c, d]] if quads else [[a, b, c], [a, c, d]]
    return verts.astype(np.float32), faces


# -- cameras -----------------------------------------------------------------------------------------------
def ring_cameras(n: int, radius: float = 3.0, seed: int = 0) -> np.ndarray:
    """(n, 3, 4) cameras on a sphere of ``radius`` looking at points near the origin."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        az = 2 * np.pi * i / n
        el = rng.uniform(-0.6, 0.8)
        eye = radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        out.append(look_at(eye, rng.normal(scale=0.1, size=3), (0.0, 0.0, 1.0)))
    return np.stack(out)


def points_in_unit_sphere(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) points uniformly distributed in the unit ball."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * rng.uniform(0, 1, (n, 1)) ** (1.0 / 3.0)


def blender_project(scene, cam_obj, points: np.ndarray) -> np.ndarray:
    """(P, 2) OpenCV pixel coordinates of world points through a Blender camera, via
    ``bpy_extras.object_utils.world_to_camera_view`` (normalized frame coordinates, y up)."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    W = scene.render.resolution_x
    H = scene.render.resolution_y
    out = np.empty((len(points), 2))
    for i, p in enumerate(points):
        x, y, _z = world_to_camera_view(scene, cam_obj, Vector([float(c) for c in p]))
        out[i] = (x * W - 0.5, (1.0 - y) * H - 0.5)
    return out


# -- an engine stand-in for process handling in Blender ------------------------------------------------------
# Where the add-on's handling of the engine's *process* is under test (not reconstruction), a stand-in makes the
# awkward cases happen on time: an engine that ignores SIGINT and SIGTERM and has a child that ignores them too, one
# that goes silent, an export on cancel that keeps reporting past the silence limit. It is started exactly as the
# real engine (``<python> -m engine fit DATA --out RUN ...``: the add-on finds it as its Engine Python) and speaks
# the real protocol. STANDIN_MODE: "family" (stubborn, heartbeats; its and its child's pids in RUN/family.json),
# "silent" (as "family", but says nothing after start),
# "export" (a cancel starts an export that sends heartbeats for STANDIN_EXPORT_S seconds, then writes a real
# mesh.ply and ends cancelled), "export-silent" (that export goes silent).
STANDIN_ENGINE = r'''
import json, os, signal, subprocess, sys, time
mode = os.environ.get("STANDIN_MODE", "family")
run_dir = sys.argv[sys.argv.index("--out") + 1]
os.makedirs(run_dir, exist_ok=True)
def emit(event, **kw):
    print(json.dumps({"event": event, "time": time.time(), **kw}), flush=True)
stop = {"at": None}
def on_stop(signum, frame):
    stop["at"] = stop["at"] or time.time()
stubborn = mode in ("family", "silent")
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN if stubborn else on_stop)
emit("start", version=1, command="fit", device="cpu", device_name="stand-in", total_steps=100000, start_step=0)
emit("stage", stage="training")
if stubborn:
    ignore = "import signal, time; [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)]"
    child = subprocess.Popen([sys.executable, "-c", ignore + "; time.sleep(600)"], stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "family.json.tmp"), "w") as f:
        json.dump({"engine": os.getpid(), "child": child.pid}, f)
    os.replace(os.path.join(run_dir, "family.json.tmp"), os.path.join(run_dir, "family.json"))
    while True:
        if mode == "family":
            emit("heartbeat", stage="training", elapsed_s=0.5)
        time.sleep(0.5)
step = 0
while stop["at"] is None and not os.path.exists(os.path.join(run_dir, "STOP")):
    step += 1
    emit("progress", step=step, total=100000, loss=0.1, psnr=None, eta_s=99.0)
    time.sleep(0.1)
emit("stage", stage="extracting")
if mode == "export-silent":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    time.sleep(600)
t0 = time.time()
while time.time() - t0 < float(os.environ.get("STANDIN_EXPORT_S", "3")):
    emit("heartbeat", stage="extracting", elapsed_s=round(time.time() - t0, 1))
    time.sleep(0.3)
mesh = os.path.join(run_dir, "mesh.ply")
with open(mesh, "w") as f:
    f.write("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
            "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n0.5 0 0\n0 0.5 0\n3 0 1 2\n")
emit("cancelled", step=step, checkpoint=None, mesh=mesh, reason="request", export="done")
sys.exit(130)
'''


def standin_engine(folder: Path) -> Path:
    """Writes the stand-in as an executable "Python" (``folder/python``) to set as the Engine Python."""
    import stat
    import sys

    path = folder / "python"
    path.write_text(f"#!{sys.executable}\n{STANDIN_ENGINE}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def pids_alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still exist as processes (a zombie, dead but not yet reaped, counts as gone)."""
    import os

    alive = []
    for pid in pids:
        if Path("/proc").is_dir():
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if state != "Z":
                alive.append(pid)
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive
