"""Shared fixtures: the DTU scan (or a skip with the reason) and trained runs of the bundled sample scene.

Training dominates the suite's time, so each scene/config is trained at most once per pytest session and the run
folder is shared, also between pytest-xdist workers (the first worker to need a run trains it under a file lock; the
others wait for it and read the same folder). A test that changes a run (exports into it, damages it, makes it
read-only) works on a copy (``TrainedRun.copy_to``). Each run is sized to the strictest assertion made on it; say
there which test needs what.

Tests that time the engine (cancel within 2.5 s, heartbeat spacing, silence deadlines) are marked ``serial``: the
README's test command runs every other test on two xdist workers first, then the serial ones alone, so a timing
bound is never judged while another test loads the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_helpers import TINY, run_engine
from filelock import FileLock
from paths import HAS_SAMPLE, NO_SAMPLE_REASON, SAMPLE, dtu_or_skip


@dataclass(frozen=True)
class TrainedRun:
    """One ``engine fit`` of the sample scene: its run folder, exit code, JSON-lines events and stderr."""

    folder: Path
    code: int
    events: list[dict]
    stderr: str

    def check(self) -> TrainedRun:
        """Fails the calling test (not the fixture) with the engine's own error when training failed."""
        assert self.code == 0, self.stderr[-3000:]
        return self

    def last(self, event: str) -> dict | None:
        found = [e for e in self.events if e["event"] == event]
        return found[-1] if found else None

    def copy_to(self, dest: Path) -> Path:
        """A private copy of the run folder for tests that change it."""
        shutil.copytree(self.folder, dest)
        return dest


def _once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], dict]) -> dict:
    """``make(folder)`` run once per pytest session, xdist workers included: the first worker to ask runs it under a
    file lock in the folder all workers share and records its (JSON) result; the others wait and read the record."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    record = root / "record.json"
    with FileLock(f"{root}.lock"):
        if not record.is_file():
            root.mkdir(exist_ok=True)
            record.write_text(json.dumps(make(root)))
        return json.loads(record.read_text())


@pytest.fixture(scope="session")
def once(tmp_path_factory) -> Callable[[str, Callable[[Path], dict]], dict]:
    """``once(name, make)``: an expensive session-wide result (a solve, a fit) shared by all xdist workers."""
    return lambda name, make: _once(tmp_path_factory, name, make)


def _fit(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str, timeout: float) -> TrainedRun:
    if not HAS_SAMPLE:
        pytest.skip(NO_SAMPLE_REASON)

    def train(root: Path) -> dict:
        folder = root / "run"
        try:
            # One CPU thread whatever the load: the engine takes the cores idle when it starts, and another thread
            # count sums in another order, so the run (and every bound measured on it) would follow the load.
            code, events, err = run_engine("fit", str(SAMPLE), "--out", str(folder), "--progress", "jsonl", *args,
                                           timeout=timeout, threads=1)
        except subprocess.TimeoutExpired as exc:  # every test using the run fails with this, not a setup error
            partial = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            code, events, err = -1, [], f"engine fit {' '.join(args)} timed out after {timeout:.0f} s\n{partial}"
        return {"folder": str(folder), "code": code, "events": events, "stderr": err}

    fields = _once(tmp_path_factory, f"fit-{name}", train)
    return TrainedRun(Path(fields.pop("folder")), **fields)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that train or solve (``slow``) first: with two xdist workers the long ones then overlap with the many
    short ones instead of ending the session alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def dtu_scan() -> Path:
    """The real DTU scan 65, or a skip naming where it was looked for."""
    return dtu_or_skip()


@pytest.fixture
def bpy(request):
    """Blender (the bpy module) with factory settings and the add-on registered; unregistered afterwards, which
    also ends an engine a failed test left running. A module that needs the scene set up (a dataset, an output
    folder) defines ``setup_scene(scene, request)``; ``request.getfixturevalue`` gives it ``tmp_path`` and others."""
    import bpy as _bpy

    import neus_blender_addon as addon
    from neus_blender_addon import job_driver

    _bpy.ops.wm.read_factory_settings(use_empty=True)
    addon.register()
    setup_scene = getattr(request.module, "setup_scene", None)
    if setup_scene is not None:
        setup_scene(_bpy.context.scene, request)
    yield _bpy
    addon.unregister()
    assert not job_driver.is_running()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> TrainedRun:
    """A dozen steps with the default preset, coarse extraction, every mesh format: enough for the protocol, the
    output files, export/render/eval on a real run and damaged-run handling; far from converged (the surface is
    still near the initial sphere, which test_export_eval_and_doctor relies on)."""
    return _fit(tmp_path_factory, "smoke", "--steps", "12", "--set", "export.formats=[ply,obj,glb]", *TINY,
                timeout=600)


@pytest.fixture(scope="session")
def masked_preview_run(tmp_path_factory) -> TrainedRun:
    """Masked ``preview`` with every 8th view held out (5 of 40): held-out PSNR / mask IoU, Chamfer against the
    ground truth, vertex colours, and held-out figures for texture tests. 500 steps: what test_engine_e2e's smoke
    bounds (PSNR >= 20 dB, IoU > 0.9, Chamfer < 5 % of the radius) were set for."""
    return _fit(tmp_path_factory, "masked_preview", "--preset", "preview", "--steps", "500",
                "--set", "data.holdout_every=8", "--set", "export.resolution=128", timeout=900)
