"""``python -m engine.bench_capture PHOTOS --out RUN_DIR [--events FILE] [fit options...]``: photos to mesh, measured.

Runs ``engine fit PHOTOS --out RUN_DIR --progress jsonl`` (cameras solved, no masks) and prints one JSON line with
what an artist would get: photos given and placed, the automatic region (radius, whether it is uncertain and why),
held-out and last training PSNR, the mesh files and their vertex/face counts, wall and CPU seconds, the peak memory
of the engine's processes, and the longest silence on standard output, both between any two lines (heartbeats
included: what a reader sees) and between two real events (heartbeats excluded: how long a phase ran without a
count). Every line is timed when it is read; ``--events`` keeps them (``{"recv": t, "event": {...}}`` per line).
With ``--summarise FILE`` it only summarises an events file written before, without running anything. With
``--known DATA_DIR --gt MESH`` (a calibrated dataset of the same photos, matched by file stem, and its ground-truth
mesh in its normalized frame) the run's ``mesh.ply`` is brought into that frame through the similarity fitted on
the camera centres and judged as ``engine.bench`` judges a calibrated run (Chamfer as a percentage of the radius).
Unknown options go to ``fit`` (``--preset preview``, ``--set data.downscale=2``, ``--steps N``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def mesh_counts(path: Path) -> dict:
    """Vertex and face counts of a mesh file (read with trimesh), and its size on disk."""
    import trimesh

    mesh = trimesh.load(path, force="mesh", process=False)
    return {"file": path.name, "vertices": len(mesh.vertices), "faces": len(mesh.faces),
            "mb": round(path.stat().st_size / 1e6, 2)}


def longest_gap(times: list[float], labels: list[str]) -> tuple[float, str]:
    """The longest interval between consecutive times, and the label of the line that opened it."""
    if len(times) < 2:
        return 0.0, ""
    gaps = [(b - a, labels[k]) for k, (a, b) in enumerate(zip(times, times[1:], strict=False))]
    gap, label = max(gaps)
    return round(gap, 2), label


def summarise(records: list[dict], run_dir: Path) -> dict:
    """Figures of one fit from its timed events (``records``: ``{"recv", "event"}``) and its run folder."""
    events = [r["event"] for r in records]
    labels = [f"{e.get('event')} {e.get('stage', '')}".strip() for e in events]
    recv = [r["recv"] for r in records]
    real = [k for k, e in enumerate(events) if e.get("event") != "heartbeat"]
    solved = next((e for e in events if e.get("event") == "solved"), {})
    validations = [e for e in events if e.get("event") == "validation"]
    training = [e for e in events if e.get("event") == "progress" and e.get("loss") is not None]
    warnings = [e for e in events if e.get("event") == "warning"]
    last = events[-1] if events else {}
    summary = {
        "final_event": last.get("event"), "error": last.get("message") if last.get("event") == "error" else None,
        "photos_given": solved.get("given"), "photos_placed": solved.get("registered"),
        "left_out": solved.get("left_out"), "reprojection_px": solved.get("mean_reprojection_error_px"),
        "solve_timings": solved.get("timings"), "region": solved.get("region"),
        "region_warnings": [w["message"] for w in warnings if w.get("about") == "region"],
        "other_warnings": [w["message"] for w in warnings if w.get("about") != "region"],
        "memory": next(({k: e.get(k) for k in ("estimate_bytes", "budget_bytes", "downscale", "resolution")}
                        for e in events if e.get("event") == "memory"), None),
        "heldout_psnr": [(v["step"], v["psnr"]) for v in validations],
        "train_psnr_last": training[-1].get("psnr") if training else None,
        "steps": training[-1].get("step") if training else None,
        "max_silence_any_s": longest_gap(recv, labels),
        "max_silence_real_s": longest_gap([recv[k] for k in real], [labels[k] for k in real]),
        "stage_starts_s": {e["stage"]: round(t - recv[0], 1) for t, e in zip(recv, events, strict=True)
                           if e.get("event") == "stage"},
    }
    meshes = sorted(p for p in run_dir.glob("mesh*") if p.suffix in (".ply", ".obj", ".glb"))
    summary["meshes"] = [mesh_counts(p) for p in meshes]
    return summary


def geometry_in_known_frame(run_dir: Path, known: Path, gt: Path) -> dict:
    """The run's mesh against the ground truth of a calibrated dataset of the same photos (see the docstring)."""
    import datasets
    from datasets.normalization_file import read_normalization_json

    from .bench import geometry_against
    from .mesh.frames import transform_vertices
    from .mesh.read import read_mesh
    from .solve.compare import solved_world_to_known

    scale_mat, _ = read_normalization_json(run_dir)
    mesh = read_mesh(run_dir / "mesh.ply")
    to_known = solved_world_to_known(datasets.load(run_dir / "solved"), datasets.load(known))
    vertices = to_known.apply(transform_vertices(mesh.vertices, scale_mat))
    return {"solved_to_known_scale": round(to_known.scale, 5), **geometry_against((vertices, mesh.faces), gt)}


def run_fit(photos: Path, run_dir: Path, extra: list[str], events_file: Path | None) -> tuple[list[dict], dict]:
    """Run ``engine fit`` and time every stdout line as it arrives; returns the records and process figures."""
    command = [sys.executable, "-m", "engine", "fit", str(photos), "--out", str(run_dir), "--progress", "jsonl",
               *extra]
    start = time.monotonic()
    records: list[dict] = []
    sink = events_file.open("w") if events_file else None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True) as proc:
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            record = {"recv": time.time(), "event": json.loads(line)}
            records.append(record)
            if sink:
                sink.write(json.dumps(record) + "\n")
                sink.flush()
    if sink:
        sink.close()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss of children is the largest single descendant waited for (the engine or its pycolmap child), in KiB.
    return records, {"exit_code": proc.returncode, "wall_s": round(time.monotonic() - start, 1),
                     "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                     "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench_capture", description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, nargs="?")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--events", type=Path, help="keep the timed events here (JSON lines)")
    parser.add_argument("--summarise", type=Path, help="summarise this events file instead of running a fit")
    parser.add_argument("--known", type=Path, help="calibrated dataset of the same photos (with --gt)")
    parser.add_argument("--gt", type=Path, help="ground-truth mesh in the known dataset's normalized frame")
    args, extra = parser.parse_known_args(argv)
    if (args.known is None) != (args.gt is None):
        parser.error("--known and --gt go together")
    if args.summarise:
        records = [json.loads(line) for line in args.summarise.read_text().splitlines() if line.strip()]
        process: dict = {}
    elif args.photos is None:
        parser.error("PHOTOS is required unless --summarise is given")
    else:
        records, process = run_fit(args.photos, args.out, extra, args.events)
    summary = {"photos": str(args.photos), **process, **summarise(records, args.out)}
    if args.known is not None and (args.out / "mesh.ply").is_file():
        summary["geometry"] = geometry_in_known_frame(args.out, args.known, args.gt)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
