"""Benchmark: run a preset on a scene and print one JSON summary (speed, memory, quality, per-phase profile).

    python -m engine.bench datasets/sample_scene/data --preset preview \
        --gt datasets/sample_scene/data/gt_mesh_normalized.ply

Not a test: it prints figures. Copy the ones you quote into engine/BENCHMARKS.md with device, date and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .cancel import CancelToken
from .cpu_threads import configure_torch_threads
from .fit_setup import FitRequest
from .profiling import OpCounter
from .protocol import Emitter
from .rss import peak_rss_bytes
from .train import run_fit


def git_commit() -> str:
    """The commit being measured (NEUS_COMMIT when the tree was copied without .git, as on the GPU machine)."""
    if os.environ.get("NEUS_COMMIT"):
        return os.environ["NEUS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class _FirstStepClock(Emitter):
    """An Emitter that also notes when the first step ended (``elapsed_s`` of the first progress event)."""

    first_step_s: float | None = None

    def emit(self, event: str, **fields) -> None:
        if event == "progress" and self.first_step_s is None:
            self.first_step_s = fields.get("elapsed_s")
        super().emit(event, **fields)


def run_benchmark(scene: Path, preset: str, device: str, steps: int | None, gt: Path | None, holdout: int,
                  overrides: list[str], out_dir: Path, phase_timer: bool = True, events: Path | None = None,
                  op_count_after: int = 0) -> dict:
    threads = configure_torch_threads()
    req = FitRequest(data_dir=scene, run_dir=out_dir, preset=preset, steps=steps, device=device,
                     overrides=[f"data.holdout_every={holdout}", *overrides], profile=True, phase_timer=phase_timer)
    counter = OpCounter(skip=op_count_after, cuda=torch.cuda.is_available()) if op_count_after > 0 else None
    with counter or contextlib.nullcontext():
        if events is None:
            emitter = _FirstStepClock("none", min_interval_s=5.0)
            result = run_fit(req, emitter, CancelToken())
        else:  # a run stopped at a time limit still shows how far it got
            with open(events, "w") as stream:
                emitter = _FirstStepClock("jsonl", stream=stream, min_interval_s=5.0)
                result = run_fit(req, emitter, CancelToken())
    t = result["timings"]
    n_steps = int(result["steps"])
    first = emitter.first_step_s
    summary = {
        "date": datetime.date.today().isoformat(), "commit": git_commit(), "scene": str(scene), "preset": preset,
        "device": result["device"], "device_name": result["device_name"], "torch": torch.__version__,
        "threads": torch.get_num_threads(), "threads_from": threads.source, "usable_cores": threads.usable_cores,
        "idle_cores_at_start": None if threads.idle_cores is None else round(threads.idle_cores, 2),
        "steps": n_steps, "train_s": t["train_s"], "extract_s": t["extract_s"],
        "export_s": t["export_s"], "load_s": t["load_s"],
        "wall_to_mesh_s": round(t["train_s"] + t["extract_s"] + t["export_s"], 2),
        "steps_per_s": round(n_steps / max(t["train_s"], 1e-9), 2),
        # The first step carries torch.compile's compilation (tens of seconds on a GPU with a cold cache).
        "first_step_s": first,
        "steps_per_s_after_first": None if first is None or n_steps < 2 or t["train_s"] <= first
        else round((n_steps - 1) / (t["train_s"] - first), 2),
        "samples_per_s": round(result["mean_samples_per_step"] * n_steps / max(t["train_s"], 1e-9)),
        "mean_samples_per_step": round(result["mean_samples_per_step"]),
        "peak_gpu_memory_gb": result.get("peak_memory_gb"),
        "peak_rss_gb": round(peak_rss_bytes() / 2**30, 2),
        "heldout_psnr": (result.get("validation") or {}).get("psnr"),
        "mask_iou": (result.get("validation") or {}).get("mask_iou"),
        "profile_ms_per_step": result["profile_ms_per_step"],  # {} with --no-phase-timer
        "ops_per_step": counter.result if counter is not None else None,  # --op-count: launch-overhead proxy
        "overrides": overrides,
    }
    if gt is not None:
        summary.update(geometry_against(result["mesh"], gt))
    return summary


def geometry_against(mesh, gt: Path) -> dict:
    """Chamfer-L1, F-score at 0.01 and Chamfer as a percentage of the ground truth's radius (largest distance of its
    vertices from their mean) of ``mesh`` (a path or (vertices, faces) in the ground truth's frame)."""
    from .mesh.evaluate import evaluate_mesh
    from .mesh.read import read_mesh

    metrics = evaluate_mesh(mesh, gt, threshold=0.01, n_samples=200_000)["normalized"]
    gt_vertices = read_mesh(gt).vertices
    radius = float(np.linalg.norm(gt_vertices - gt_vertices.mean(0), axis=1).max())
    return {"chamfer_l1": round(metrics["chamfer_l1"], 5), "fscore_at_0_01": round(metrics["fscore"], 4),
            "gt_radius": round(radius, 4), "chamfer_pct_of_radius": round(100 * metrics["chamfer_l1"] / radius, 3)}


def _spin_forever() -> None:  # the busy neighbour (another process, so it competes like Blender would)
    while True:
        pass


def busy_core_comparison(child_args: list[str]) -> dict:
    """Runs the benchmark twice in fresh processes: alone, then with another process keeping one core busy (pinned
    to the last usable core). Returns both summaries and ``busy_ratio`` = busy / alone wall-to-mesh time (the
    engine's goal: at most 2.5). ``load_avg_before`` tells a reader whether "alone" really was a quiet machine."""
    import multiprocessing

    def run_child() -> dict:
        out = subprocess.run([sys.executable, "-m", "engine.bench", *child_args], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1])
        return json.loads(out.stdout.strip().splitlines()[-1])

    load_before = os.getloadavg()
    alone = run_child()
    spinner = multiprocessing.get_context("spawn").Process(target=_spin_forever, daemon=True)
    spinner.start()
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(spinner.pid, {sorted(os.sched_getaffinity(0))[-1]})
        time.sleep(1.0)  # let the neighbour show up in the engine's idle-core sample
        busy = run_child()
    finally:
        spinner.terminate()
        spinner.join()
    return {"date": alone["date"], "commit": alone["commit"], "load_avg_before": [round(x, 2) for x in load_before],
            "alone": alone, "one_core_busy": busy,
            "busy_ratio": round(busy["wall_to_mesh_s"] / max(alone["wall_to_mesh_s"], 1e-9), 2)}


def _without(argv: list[str], flags: set[str], with_value: set[str]) -> list[str]:
    """``argv`` less the given flags and options (``--opt VALUE`` or ``--opt=VALUE``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in with_value:
            skip = True
        elif arg not in flags and arg.split("=", 1)[0] not in with_value:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scene", type=Path)
    p.add_argument("--preset", default="preview")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--gt", type=Path, default=None, help="ground-truth mesh (normalized frame) for Chamfer")
    p.add_argument("--holdout", type=int, default=8, help="hold out every k-th view for PSNR / IoU")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    p.add_argument("--results", type=Path, default=None, help="append the JSON summary to this JSON-lines file")
    p.add_argument("--no-phase-timer", action="store_true",
                   help="no per-phase profile: it synchronises the device at every phase, which hides the gain of a "
                        "sync-free step (compare model.sampler=packed and static this way)")
    p.add_argument("--events", type=Path, default=None,
                   help="write the run's progress events (JSON lines, one per 5 s) to this file")
    p.add_argument("--op-count", type=int, default=0, metavar="SKIP",
                   help="count the operators of 5 training steps after SKIP steps (torch.profiler; a proxy for "
                        "launch overhead): ops_per_step in the summary")
    p.add_argument("--busy-core", action="store_true",
                   help="run twice, alone and with another process keeping one core busy, and report the ratio")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.busy_core:
        summary = busy_core_comparison(_without(argv, flags={"--busy-core"}, with_value={"--results", "--out"}))
        print(json.dumps(summary))
        if args.results is not None:
            with open(args.results, "a") as f:
                f.write(json.dumps(summary) + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_benchmark(args.scene, args.preset, args.device, args.steps, args.gt, args.holdout,
                                args.overrides, args.out or Path(tmp) / "run", phase_timer=not args.no_phase_timer,
                                events=args.events, op_count_after=args.op_count)
    print(json.dumps(summary))
    if args.results is not None:
        with open(args.results, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
