"""``engine solve``: cameras for a folder of photos or a video with pycolmap, written as a COLMAP dataset.

DATA_DIR receives ``images/`` (undistorted, PINHOLE), ``sparse/0/*.bin`` and ``solve.json``, so
``datasets.load(DATA_DIR)`` and ``engine fit DATA_DIR`` read it with no extra flags. Everything is built in a
hidden staging folder beside DATA_DIR and renamed into place at the end: a failed or cancelled solve leaves
nothing half-written (an earlier solve in DATA_DIR stays until the new one is complete).

The pycolmap stages run in a child process (``engine.solve.sfm``) that this process ends on SIGINT, SIGTERM, a
``stop`` line or a ``DATA_DIR/STOP`` file, so cancelling takes effect within a fraction of a second even in the
middle of one long pycolmap call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from datasets.scale_file import check_distance, find_name

from ..config_schema import SolveConfig
from ..errors import Cancelled, EngineError, InputError
from ..protocol import PROTOCOL_VERSION, Emitter
from .sfm import SfmJob, choose_cameras, choose_matcher, cpu_seconds, import_pycolmap, peak_rss_mb
from .sources import PreparedSource, prepare_photos, prepare_video, source_kind

SOLVE_FILE = "solve.json"
_POLL_S = 0.1
_TERMINATE_WAIT_S = 1.0
KEEPALIVE_S = 2.0  # a stage that has reported nothing for this long repeats its last count (no silent phase)


@dataclass
class SolveRequest:
    source: Path  # folder of photos or a video file
    out: Path  # DATA_DIR
    settings: SolveConfig = field(default_factory=SolveConfig)  # checked by engine.config.settings_from_flags


def parse_known_distance(text: str | None) -> tuple[str, str, float] | None:
    """``IMG_A,IMG_B,METRES`` -> (name, name, metres); None for None. InputError (one line) when malformed."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).rsplit(",", 2)]
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise InputError(f"--known-distance must be IMG_A,IMG_B,METRES (two photo names and the distance between "
                         f"their cameras in metres), got {text!r}")
    try:
        return parts[0], parts[1], check_distance(parts[2])
    except ValueError as exc:
        raise InputError(f"--known-distance: {exc}") from None


def _known_names(known: tuple[str, str, float] | None, prepared: PreparedSource,
                 source: Path) -> tuple[str, str] | None:
    """The dataset names of the two photos of ``--known-distance`` (matched by dataset name, then by the photo's
    own file name); InputError naming an unknown photo, before any solving."""
    if known is None:
        return None
    names = [im.name for im in prepared.images]
    by_source = {Path(im.source).name: im.name for im in prepared.images}
    out = []
    for wanted in known[:2]:
        try:
            out.append(find_name(names, wanted))
        except ValueError as exc:
            if wanted not in by_source:
                raise InputError(f"{source}: --known-distance: {exc}") from None
            out.append(by_source[wanted])
    if out[0] == out[1]:
        raise InputError(f"{source}: --known-distance needs two different photos, got {out[0]!r} twice")
    return out[0], out[1]


def _finish_dataset(result: Path, known: tuple[str, str, float] | None, names: tuple[str, str] | None,
                    emitter: Emitter) -> dict:
    """Writes scale.json (when the two photos were placed) into the finished dataset ``result`` and loads its cameras
    as ``fit`` will: the automatic region (a ``warning`` per reason it is uncertain) and the true scale."""
    from datasets import DatasetError, load_cameras
    from datasets.scale_file import write_known_distance

    cams = load_cameras(result)
    if known is not None:
        missing = [n for n in names if n not in cams.names]
        if missing:
            emitter.emit("warning", message=f"--known-distance not applied: {', '.join(missing)} could not be "
                         "placed; set the scale later in Blender (True Scale) or solve again", left_out=[])
        else:
            write_known_distance(result, cams.names, names[0], names[1], known[2])
            try:
                cams = load_cameras(result)
            except DatasetError as exc:  # the two cameras were placed at one point
                (result / "scale.json").unlink()
                emitter.emit("warning", message=f"--known-distance not applied: {exc}", left_out=[])
    for note in cams.region_notes:
        emitter.emit("warning", message=f"automatic region uncertain: {note}", left_out=[], about="region")
    S = cams.scale_mat
    return {"region": {"center": [float(v) for v in S[:3, 3]], "radius": float(S[0, 0]),
                       "uncertain": bool(cams.region_notes), "notes": list(cams.region_notes)},
            "metres_per_unit": cams.metres_per_unit}


def _check_out(out: Path) -> None:
    """DATA_DIR may be new, empty, or an earlier solve (replaced); anything else is never overwritten."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir():
        entries = [p.name for p in out.iterdir() if p.name != "STOP"]
        if entries and not (out / SOLVE_FILE).is_file():
            raise InputError(f"{out}: folder is not empty and holds no earlier solve ({SOLVE_FILE}); choose a new "
                             "or empty folder")


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class _Child:
    """``python -m engine.solve.child JOB.json``: its JSON lines arrive on a queue; it can be ended at any time."""

    def __init__(self, job_file: Path) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the engine's own checkout, whatever the caller's cwd
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.solve.child", str(job_file)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sys.stderr.fileno(),
                                     text=True, env=env)
        self.messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True, name="solve-child").start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.messages.put(json.loads(line))
        self.messages.put(None)  # end of output

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(_TERMINATE_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Relay:
    """Relays the child's stage and progress messages as events, and repeats the current stage's last count every
    KEEPALIVE_S while the child is inside one long pycolmap call (feature extraction of a large photo, a global
    bundle adjustment, incremental mapping between registrations), so no stage is silent. Done here,
    in the parent: a thread in the child would wait for pycolmap calls that hold Python's GIL."""

    def __init__(self, emitter: Emitter, current: dict, elapsed_s: float) -> None:
        self.emitter = emitter
        self.current = current  # stage, step, total, unit of the stage under way (at first: the one just done,
        # repeated while the child starts)
        self.last_emit = time.monotonic()
        self.stage_start = self.last_emit - elapsed_s

    def stage(self, message: dict) -> None:
        self.emitter.emit("stage", **message)
        self.current = {"stage": message["stage"], "step": 0, "total": message.get("total"),
                        "unit": message.get("unit")}
        self.stage_start = self.last_emit = time.monotonic()

    def progress(self, message: dict) -> None:
        self.emitter.progress(force=message["step"] >= message["total"], loss=None, psnr=None, **message)
        now = time.monotonic()
        self.current = {key: message[key] for key in ("stage", "step", "total", "unit")}
        self.stage_start, self.last_emit = now - message["elapsed_s"], now

    def idle(self) -> None:
        now = time.monotonic()
        if now - self.last_emit < KEEPALIVE_S or not self.current["total"]:
            return
        elapsed, step = now - self.stage_start, self.current["step"]
        eta = elapsed / step * (self.current["total"] - step) if step else None
        self.emitter.progress(force=True, loss=None, psnr=None, **self.current, elapsed_s=round(elapsed, 2),
                              eta_s=None if eta is None else round(eta, 1))
        self.last_emit = now


def _run_child(job: SfmJob, job_file: Path, emitter: Emitter, token, relay: _Relay) -> dict:
    """Runs the pycolmap stages in a child, relaying its progress; returns its result message."""
    job_file.write_text(json.dumps(dataclasses.asdict(job)))
    child = _Child(job_file)
    try:
        while True:
            if token.is_set():
                raise Cancelled()
            try:
                message = child.messages.get(timeout=_POLL_S)
            except queue.Empty:
                relay.idle()
                continue
            if message is None:
                child.proc.wait()
                raise EngineError(f"camera solving stopped unexpectedly (exit code {child.proc.returncode}; see the "
                                  "log above)")
            kind = message.pop("type")
            if kind == "stage":
                relay.stage(message)
            elif kind == "progress":
                relay.progress(message)
            elif kind == "failed":
                raise EngineError(f"camera solving failed: {message['message']}")
            elif kind == "result":
                child.proc.wait()
                return message
    finally:
        child.stop()


def _prepare(req: SolveRequest, kind: str, image_dir: Path, emitter: Emitter, token) -> PreparedSource:
    emitter.emit("stage", stage="reading", unit="frames" if kind == "video" else "photos")
    start = time.monotonic()

    def progress(done: int, total: int) -> None:
        if token.is_set():
            raise Cancelled()
        elapsed = time.monotonic() - start
        emitter.progress(force=done >= total, stage="reading", step=done, total=total,
                         unit="frames" if kind == "video" else "photos", loss=None, psnr=None,
                         elapsed_s=round(elapsed, 2), eta_s=round(elapsed / done * (total - done), 1) if done else None)

    if kind == "video":
        return prepare_video(req.source, image_dir, req.settings.fps, req.settings.max_frames, progress)
    return prepare_photos(req.source, image_dir, progress)


def run_solve(req: SolveRequest, emitter: Emitter, token, announce: bool = True) -> dict:
    """Solves ``req.source`` into ``req.out``; returns the ``done`` event's fields. Raises InputError, Cancelled.

    ``announce``: emit the ``start`` event (off when ``fit`` solves first and announces itself).
    """
    pycolmap = import_pycolmap()  # keeping the engine's SIGTERM handler (a stop request)

    kind = source_kind(req.source)
    _check_out(req.out)
    out = req.out.resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".neus_solve.{out.name}."
        for stale in out.parent.glob(prefix + "*"):  # left by a solve into the same DATA_DIR that was killed
            emitter.log(f"removing {stale}, left by an earlier solve that was killed")
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except OSError as exc:
        raise InputError(f"{out.parent}: cannot write here ({exc.strerror or exc})") from exc
    t0, cpu0 = time.monotonic(), cpu_seconds()
    try:
        work, result = staging / "work", staging / "result"
        (work / "images").mkdir(parents=True)
        result.mkdir()
        if announce:
            emitter.emit("start", version=PROTOCOL_VERSION, command="solve", source=str(req.source.resolve()),
                         data_dir=str(out), kind=kind, matcher=req.settings.matcher, camera=req.settings.camera,
                         max_image_size=req.settings.max_image_size, pycolmap=pycolmap.__version__)
        prepared = _prepare(req, kind, work / "images", emitter, token)
        known = parse_known_distance(req.settings.known_distance)
        known_names = _known_names(known, prepared, req.source)
        read_s, read_cpu_s = round(time.monotonic() - t0, 2), round(cpu_seconds() - cpu0, 2)
        if prepared.left_out:
            emitter.emit("warning", message=f"{len(prepared.left_out)} of {prepared.given} "
                         f"{'frames' if kind == 'video' else 'photos'} left out before solving: "
                         f"{_names([x['name'] + ' (' + x['reason'] + ')' for x in prepared.left_out])}",
                         left_out=prepared.left_out)
        names = [im.name for im in prepared.images]
        matcher = choose_matcher(req.settings.matcher, kind, len(names))
        try:
            sizes = [(im.width, im.height) for im in prepared.images]
            camera, groups = choose_cameras(req.settings.camera, names, sizes,
                                            [im.focal_prior_px for im in prepared.images])
        except ValueError as exc:
            raise InputError(f"{req.source}: {exc}") from exc
        job = SfmJob(image_dir=str(work / "images"), work_dir=str(work), out_dir=str(result), names=names,
                     focal_priors={im.name: im.focal_prior_px for im in prepared.images if im.focal_prior_px},
                     matcher=matcher, loop=kind == "video", max_image_size=req.settings.max_image_size,
                     camera=camera, groups=groups,
                     turned={im.name: 90 * im.turns for im in prepared.images if im.turns})
        unit = "frames" if kind == "video" else "photos"
        relay = _Relay(emitter, {"stage": "reading", "step": prepared.given, "total": prepared.given, "unit": unit},
                       time.monotonic() - t0)
        sfm = _run_child(job, staging / "job.json", emitter, token, relay)
        placed = sfm["registered_names"]
        _check_placed(req, prepared, placed, names)
        source_of = {im.name: im.source for im in prepared.images}
        not_placed = [source_of[n] for n in names if n not in set(placed)]
        if not_placed:
            emitter.emit("warning", message=f"{len(not_placed)} of {len(names)} photos could not be placed and are "
                         f"left out: {_names(not_placed)}", left_out=[{"name": n, "reason": "not placed"}
                                                                       for n in not_placed])
        emitter.emit("stage", stage="writing")
        summary = {
            "version": 1,
            "source": str(req.source.resolve()),
            "kind": kind,
            "given": prepared.given,
            "solved_from": len(names),
            "registered": len(placed),
            "registered_names": placed,
            "left_out": prepared.left_out + [{"name": n, "reason": "not placed"} for n in not_placed],
            "mean_reprojection_error_px": round(sfm["mean_reprojection_error_px"], 4),
            "n_points": sfm["n_points"],
            "n_models": sfm["n_models"],
            "model_sizes": sfm["model_sizes"],  # photos placed in each model mapping made (the largest is kept)
            "principal_point": sfm["principal_point"],  # the final refinement: kept or not, and why
            # the cameras' distortion terms, and whether they were set to zero (the photos did not need them)
            "distortion": sfm.get("distortion"),
            # small photos: the observations over filter_px dropped and the model adjusted again (sfm._polish)
            "polish": sfm.get("polish"),
            "mapping_retry": sfm["mapping_retry"],  # null, or the misplaced images that made mapping run again
            "matcher": matcher,
            "pairs": sfm["n_pairs"],  # image pairs matched (exhaustive: all; otherwise within the pair budget)
            "device": sfm.get("device"),  # where SIFT ran: cpu, or cuda with a CUDA build of pycolmap
            # photos turned by a quarter (degrees counter-clockwise) into the set's orientation; their images in
            # DATA_DIR are turned and their cameras rolled with them
            "turned": job.turned,
            "camera": job.camera,
            "max_image_size": req.settings.max_image_size,
            "timings": {"read_s": read_s, **sfm["timings"], "total_s": round(time.monotonic() - t0, 2)},
            # CPU seconds (user + system, all threads) per stage: reading in this process, the rest in the child
            # (its total_s: the child's whole life); on a shared machine these, not the wall clock, are the cost
            "cpu_s": {"read_s": read_cpu_s, **sfm["cpu_s"]},
            # peak resident memory, MiB, of this process (reading the photos) and of the pycolmap child
            "peak_rss_mb": {"reading": peak_rss_mb(), "solving": sfm["peak_rss_mb"]},
            "pycolmap": pycolmap.__version__,
        }
        summary.update(_finish_dataset(result, known, known_names, emitter))
        (result / SOLVE_FILE).write_text(json.dumps(summary, indent=2))
        _move_into_place(result, out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = {"images": str(out / "images"), "sparse": str(out / "sparse" / "0"), "solve": str(out / SOLVE_FILE)}
    return {"data_dir": str(out), "registered": summary["registered"], "given": summary["given"],
            "left_out": summary["left_out"], "mean_reprojection_error_px": summary["mean_reprojection_error_px"],
            "files": files, "timings": summary["timings"], "region": summary["region"],
            "metres_per_unit": summary["metres_per_unit"]}


def _check_placed(req: SolveRequest, prepared: PreparedSource, placed: list[str], names: list[str]) -> None:
    needed = max(3, int(-(-req.settings.min_placed * len(names) // 1)))
    if len(placed) >= needed:
        return
    source_of = {im.name: im.source for im in prepared.images}
    missing = [source_of[n] for n in names if n not in set(placed)]
    unit = "frames" if prepared.kind == "video" else "photos"
    raise InputError(f"{req.source}: only {len(placed)} of {len(names)} {unit} could be placed (at least {needed} "
                     f"needed); the {unit} need more texture and overlap (not placed: {_names(missing)})")


def _move_into_place(result: Path, out: Path, staging: Path) -> None:
    """Renames the finished dataset onto ``out``; an earlier solve there is moved aside first, then deleted."""
    stop = out / "STOP"
    if out.exists():
        old = staging / "previous"
        os.replace(out, old)
    os.replace(result, out)
    with contextlib.suppress(OSError):
        stop.unlink()
