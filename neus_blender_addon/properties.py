"""Scene settings and run status (``scene.neus``)."""

# No `from __future__ import annotations`: Blender reads the property annotations as objects.
import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from .core.choices import (
    COLOR_SOURCE_ITEMS,
    DEVICE_ITEMS,
    FORMAT_ITEMS,
    FRAME_ITEMS,
    PRESET_ITEMS,
    TEXTURE_SIZE_ITEMS,
)
from .core.protocol import RunStatus, fidelity_text, format_eta


class NEUS_PG_settings(bpy.types.PropertyGroup):
    """Per-scene settings of the reconstruction and the status of the current run."""

    data_dir: StringProperty(name="Photos", description="Dataset folder (DTU, NeRF-synthetic or COLMAP layout), or "
                             "a folder of photos or a video file to solve the cameras of (Solve Cameras)",
                             subtype="DIR_PATH", default="")
    output_dir: StringProperty(name="Output", description="Folder of the numbered run folders run_001, run_002, "
                               "... (empty: neus_runs/<dataset> beside the .blend file, or in the temp folder)",
                               subtype="DIR_PATH", default="")
    data_format: EnumProperty(name="Format", items=FORMAT_ITEMS, default="auto")
    preset: EnumProperty(name="Preset", items=PRESET_ITEMS, default="auto")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto")
    steps: IntProperty(name="Steps", description="Training steps (0 = the preset's default)", default=0, min=0,
                       soft_max=100000)
    frame: EnumProperty(name="Frame", items=FRAME_ITEMS, default="normalized")
    texture: BoolProperty(name="Texture", description="Also export and import a textured mesh (UV atlas)",
                          default=False)
    texture_size: EnumProperty(name="Texture Size", description="Side of the square texture in pixels",
                               items=TEXTURE_SIZE_ITEMS, default="2048")
    color_source: EnumProperty(name="Colours", description="Where the texture's colours come from",
                               items=COLOR_SOURCE_ITEMS, default="photos")
    game_faces: IntProperty(name="Game-Ready Faces", description="Decimate the textured mesh to this many faces "
                            "and bake a normal map from the full-resolution surface (0: keep the full mesh)",
                            default=0, min=0, soft_max=200000)
    engine_settings: StringProperty(name="Extra Settings", description="Advanced: engine config overrides, "
                                    "space-separated KEY=VALUE (e.g. export.resolution=256 train.lr=0.01)",
                                    default="")
    use_masks: BoolProperty(name="Use Masks", description="Train with the dataset's masks when it has them (off: a "
                            "learned background separates the object; slower to converge, see the README)",
                            default=True)
    show_preview: BoolProperty(name="Live Preview", description="Show the engine's low-resolution preview meshes "
                               "while it trains", default=True)
    export_on_cancel: BoolProperty(name="Export on Cancel", description="A cancelled run still extracts its "
                                   "current mesh and brings it into the scene", default=True)

    # Run status (written by the add-on only).
    running: BoolProperty(name="Running", default=False)
    state: StringProperty(name="State", default="idle")
    stage: StringProperty(name="Stage", default="")
    step: IntProperty(name="Step", default=0)
    total: IntProperty(name="Total", default=0)
    loss: FloatProperty(name="Loss", default=0.0)
    psnr: FloatProperty(name="PSNR", default=0.0)
    has_loss: BoolProperty(default=False)
    has_psnr: BoolProperty(default=False)
    eta: StringProperty(name="ETA", default="")
    progress: FloatProperty(name="Progress", subtype="FACTOR", min=0.0, max=1.0, default=0.0)
    status_text: StringProperty(name="Status", default="")
    last_error: StringProperty(name="Last Error", default="")
    run_dir: StringProperty(name="Run Folder", description="Folder of the last run", subtype="DIR_PATH", default="")
    result_object: StringProperty(name="Result", default="")
    fidelity: StringProperty(name="Asset Fidelity", description="The textured asset rendered unlit from the run's "
                             "held-out views (else every 8th view) against the photos: PSNR inside the masks "
                             "(higher is closer; see the README)", default="")
    log_tail: StringProperty(name="Engine Log", description="The last lines of the engine's log", default="")
    silent_s: IntProperty(name="Not Responding", description="Seconds the engine has been silent, once past the "
                          "preferences' limit (0: it answers)", default=0, min=0)


def apply_status(settings: NEUS_PG_settings, status: RunStatus) -> None:
    """Copies a :class:`RunStatus` into the scene properties (main thread only)."""
    settings.running = status.state == "running"
    settings.state = status.state
    settings.stage = status.stage
    done, total, _unit = status.counts()  # a long phase's own count while it reports, else training's steps
    settings.step = int(done)
    settings.total = int(total)
    settings.has_loss = status.loss is not None
    settings.loss = float(status.loss or 0.0)
    settings.has_psnr = status.psnr is not None
    settings.psnr = float(status.psnr or 0.0)
    settings.eta = format_eta(status.eta_s) if status.state == "running" else ""
    settings.progress = status.fraction
    settings.status_text = status.status_text()
    settings.last_error = status.last_error
    settings.fidelity = fidelity_text(status.fidelity)


classes = (NEUS_PG_settings,)


def register() -> None:
    bpy.types.Scene.neus = bpy.props.PointerProperty(type=NEUS_PG_settings)


def unregister() -> None:
    del bpy.types.Scene.neus
