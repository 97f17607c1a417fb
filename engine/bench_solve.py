"""``python -m engine.bench_solve PHOTOS [--known DATA_DIR] [--out DIR]``: one ``engine solve`` timed and measured.

Prints one JSON line: photos given and placed, wall seconds and the solve's own stage timings, CPU seconds of the
whole solve (both processes: on a shared machine the wall clock is not the solve's) and of each stage, peak
memory (engine process, pycolmap child), pairs matched, the longest silence between two events, and with
``--known`` (a dataset with calibrated cameras of the same photos, matched by file stem) the camera errors after
the similarity fit.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def camera_accuracy(solved_dir: Path, known_dir: Path) -> dict:
    """Median/max rotation and centre errors of the solved cameras against the known ones (paired by stem)."""
    import datasets

    from .solve.compare import camera_errors, paired_cameras

    summary = camera_errors(*paired_cameras(datasets.load(solved_dir), datasets.load(known_dir))).summary()
    return {key: round(value, 3) for key, value in summary.items()}


def bench(photos: Path, out: Path, known: Path | None, extra: list[str]) -> dict:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "engine", "solve", str(photos), "--out", str(out), "--progress",
                           "jsonl", *extra], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    gaps = np.diff([e["time"] for e in events]) if len(events) > 1 else np.zeros(1)
    before = events[int(gaps.argmax())] if events else {}
    result = {"photos": str(photos), "exit_code": proc.returncode, "wall_s": round(wall, 1),
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "max_silence_s": round(float(gaps.max()), 2),
              "max_silence_after": f"{before.get('event')} {before.get('stage', '')}".strip()}
    if proc.returncode != 0:
        return {**result, "error": events[-1].get("message") if events else proc.stderr[-500:]}
    summary = json.loads((out / "solve.json").read_text())
    result.update({key: summary[key] for key in ("given", "registered", "matcher", "pairs", "camera", "timings",
                                                  "peak_rss_mb", "mean_reprojection_error_px")})
    result["stage_cpu_s"] = summary["cpu_s"]  # per stage: the wall timings of a shared machine mislead
    result["turned"] = len(summary["turned"])
    if known is not None:
        result["accuracy"] = camera_accuracy(out, known)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--known", type=Path, help="dataset with calibrated cameras of the same photos")
    parser.add_argument("--out", type=Path, help="DATA_DIR to keep (default: a temporary folder)")
    args, extra = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_solve.") as tmp:
        out = args.out or Path(tmp) / "data"
        print(json.dumps(bench(args.photos, out, args.known, extra)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
