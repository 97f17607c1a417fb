"""Solve Cameras in real Blender (bpy): photos alone -> ``engine solve`` in the background -> cameras, photo
backgrounds and the sparse point cloud in the scene; Reconstruct then points at the solved dataset."""

from __future__ import annotations

import functools
import shutil

import addon_helpers
import numpy as np
import pytest
from addon_helpers import HAS_BPY, NO_BPY_REASON, SAMPLE_SCENE

from neus_blender_addon.core import photo_source
from neus_blender_addon.core.errors import AddonError


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "my photos"
    folder.mkdir()
    for png in sorted((SAMPLE_SCENE / "image").glob("*.png")):
        shutil.copy(png, folder / png.name)
    return folder


def test_which_sources_need_solving(photos, tmp_path):
    assert photo_source.needs_solving(photos)
    assert not photo_source.needs_solving(SAMPLE_SCENE)  # has cameras_sphere.npz
    video = tmp_path / "walk.MP4"
    video.write_bytes(b"")
    assert photo_source.needs_solving(video) and not photo_source.needs_solving(tmp_path / "notes.txt")
    assert photo_source.solved_dir_for(video, tmp_path) == tmp_path / "walk solved"
    cmd = photo_source.build_solve_command("/py", photos, tmp_path / "out", "sequential")
    assert cmd[1:4] == ["-m", "engine", "solve"] and cmd[cmd.index("--matcher") + 1] == "sequential"
    assert cmd[-2:] == ["--progress", "jsonl"]
    with pytest.raises(AddonError, match="unknown matcher"):
        photo_source.build_solve_command("/py", photos, tmp_path / "out", "vocab")


def setup_scene(scene, request) -> None:
    """The ``bpy`` fixture's set-up (tests/conftest.py): the photos to solve, the output folder."""
    scene.neus.data_dir = str(request.getfixturevalue("photos"))
    scene.neus.output_dir = str(request.getfixturevalue("tmp_path") / "runs")


# Ticks the job driver's timer until the solve ends; returns the (stage, step, total) the panel showed.
pump = functools.partial(addon_helpers.pump, timeout=600.0, snapshot=lambda s: (s.stage, s.step, s.total))


@pytest.mark.blender
@pytest.mark.skipif(not HAS_BPY, reason=NO_BPY_REASON)
def test_solve_cameras_imports_cameras_and_sparse_points(bpy, tmp_path, photos):
    from neus_blender_addon import job_driver, timer_ui

    s = bpy.context.scene.neus
    assert bpy.ops.neus.solve_cameras(mode="ASYNC") == {"FINISHED"}
    assert job_driver.is_running()
    seen = pump()
    assert s.state == "done", s.last_error
    stages = [stage for stage, _, _ in seen]
    assert "features" in stages and "matching" in stages and "mapping" in stages  # live progress per stage
    assert any(stage == "matching" and 0 < step < total for stage, step, total in seen)

    out = tmp_path / "runs" / "my photos solved"
    assert s.data_dir == str(out) and s.data_format == "colmap"  # Reconstruct now uses the solved dataset
    coll = bpy.data.collections["my photos solved"]
    cams = [o for o in coll.all_objects if o.type == "CAMERA"]
    assert len(cams) == 40
    assert all(c.data.background_images and c.data.background_images[0].image for c in cams)  # photo backgrounds
    cloud = [o for o in coll.all_objects if o.type == "MESH" and "sparse points" in o.name]
    assert len(cloud) == 1 and len(cloud[0].data.vertices) > 500
    assert timer_ui.reports[-1] == ("INFO", f"Cameras solved into {out}")  # seen with the sidebar closed


@pytest.mark.blender
@pytest.mark.skipif(not HAS_BPY, reason=NO_BPY_REASON)
def test_solve_cameras_cancel_and_refusals(bpy, tmp_path, photos):
    from neus_blender_addon import timer_ui

    s = bpy.context.scene.neus
    assert bpy.ops.neus.solve_cameras(mode="ASYNC") == {"FINISHED"}
    with pytest.raises(RuntimeError, match="busy"):
        bpy.ops.neus.reconstruct(mode="ASYNC")
    assert not bpy.ops.neus.pick_video.poll()  # the source cannot change under a running solve
    pump(lambda st: st.stage in ("features", "matching"), timeout=120)
    assert bpy.ops.neus.cancel() == {"FINISHED"}
    pump(timeout=60)
    assert s.state == "cancelled" and not (tmp_path / "runs" / "my photos solved" / "solve.json").exists()
    assert timer_ui.reports[-1] == ("WARNING", "Camera solving cancelled")
    assert s.data_dir == str(photos)

    s.data_dir = str(SAMPLE_SCENE)  # already has cameras: nothing to solve
    with pytest.raises(RuntimeError, match="folder of photos"):
        bpy.ops.neus.solve_cameras(mode="ASYNC")


@pytest.mark.blender
@pytest.mark.skipif(not HAS_BPY, reason=NO_BPY_REASON)
def test_a_picked_video_becomes_the_source_to_solve(bpy, tmp_path, photos):
    import fnmatch

    from engine_helpers import write_video
    from PIL import Image
    from test_addon_blender import PanelStandIn

    from neus_blender_addon import ui

    video = tmp_path / "walk.mp4"  # a real (short) video of the bundled photos
    write_video(video, [np.asarray(Image.open(p).convert("RGB").resize((64, 48)))
                        for p in sorted(photos.glob("*.png"))[:3]], fps=2)
    s = bpy.context.scene.neus
    # The file browser shows the videos Solve Cameras takes (its own matching ignores case).
    patterns = bpy.ops.neus.pick_video.get_rna_type().properties["filter_glob"].default.split(";")
    assert any(fnmatch.fnmatch(video.name, p) for p in patterns)
    assert not any(fnmatch.fnmatch("000000.png", p) for p in patterns)
    # A file that is not a video is refused and the field keeps its folder of photos.
    with pytest.raises(RuntimeError, match="not a video file"):
        bpy.ops.neus.pick_video(filepath=str(next(photos.glob("*.png"))))
    assert s.data_dir == str(photos)
    assert bpy.ops.neus.pick_video(filepath=str(video)) == {"FINISHED"}
    assert s.data_dir == str(video) and photo_source.needs_solving(video)
    layout = PanelStandIn(ui.NEUS_PT_data, bpy).draw(bpy.context)
    assert "neus.pick_video" in layout.ops and "neus.solve_cameras" in layout.ops  # the button solves the video
