"""Scene loaders for NeuS: DTU / IDR, NeRF-synthetic (Blender) and COLMAP, plus ray helpers.

Camera parsing (``datasets.cameras``, ``datasets.geometry``, ``datasets.rays``, ``datasets.formats``) is numpy
+ stdlib only so the Blender add-on can vendor it; ``datasets.load`` (pixels) needs Pillow, imported on first
use. Conventions: see ``datasets.geometry``.
"""

from datasets.cameras import CameraSet, detect_format, load_cameras
from datasets.errors import DatasetError
from datasets.rays import camera_rays, pixel_directions, spherical_trajectory
from datasets.scene import Scene, load

__all__ = [
    "CameraSet",
    "DatasetError",
    "Scene",
    "camera_rays",
    "detect_format",
    "load",
    "load_cameras",
    "pixel_directions",
    "spherical_trajectory",
]
