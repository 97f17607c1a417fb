"""The add-on's choice lists (preset, device, dataset format, mesh frame), with their UI labels. No bpy.

One definition on the add-on side: the panel's enum properties, the engine launch checks and the headless
command line all read these. The engine defines its own (``engine/config_schema.py``; the add-on cannot import
it), and tests/test_addon_units.py checks that the two sides agree.
"""

from __future__ import annotations

# (identifier, label, description): the form of Blender's EnumProperty items.
PRESET_ITEMS = (
    ("auto", "Auto", "Preview on a CPU or Apple GPU, Fast on an NVIDIA GPU"),
    ("preview", "Preview", "Sized for a laptop CPU: a recognisable mesh in a few minutes"),
    ("fast", "Fast", "Good quality in a short time"),
    ("quality", "Quality", "Best quality; slowest"),
)
DEVICE_ITEMS = (
    ("auto", "Auto", "CUDA if available, then Apple MPS, else CPU"),
    ("cpu", "CPU", "Run on the CPU (slow)"),
    ("cuda", "CUDA", "NVIDIA GPU"),
    ("mps", "MPS", "Apple silicon GPU"),
)
FORMAT_ITEMS = (
    ("auto", "Auto", "Detect from the files in the folder"),
    ("dtu", "DTU / NeuS", "cameras_sphere.npz + image/ (+ mask/)"),
    ("blender", "NeRF Synthetic", "transforms_*.json"),
    ("colmap", "COLMAP", "sparse/0 + images/"),
)
FRAME_ITEMS = (
    ("normalized", "Normalized", "Object inside the unit sphere, as the engine works (default); in metres, centred "
     "on the object, once the dataset has a true scale (True Scale)"),
    ("world", "World", "The dataset's own world frame: cameras and mesh parented to an empty holding scale_mat; in "
     "metres once the dataset has a true scale"),
)
COLOR_SOURCE_ITEMS = (
    ("photos", "Photos", "Blend the best training photos per texel (sharpest; the field fills what no photo sees)"),
    ("field", "Field", "The trained radiance field's colour seen head-on (smoother, no photo detail)"),
)
TEXTURE_SIZE_ITEMS = tuple((str(n), f"{n} px", f"{n} x {n} texture") for n in (1024, 2048, 4096))

PRESETS = tuple(item[0] for item in PRESET_ITEMS)
COLOR_SOURCES = tuple(item[0] for item in COLOR_SOURCE_ITEMS)
DEVICES = tuple(item[0] for item in DEVICE_ITEMS)
FORMATS = tuple(item[0] for item in FORMAT_ITEMS)
FRAMES = tuple(item[0] for item in FRAME_ITEMS)
