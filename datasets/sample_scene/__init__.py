"""The bundled sample scene: a textured Suzanne rendered with Blender into the DTU / NeuS-IDR layout.

``SAMPLE_SCENE_DIR`` holds ``image/``, ``mask/``, ``cameras_sphere.npz``, the ground-truth meshes and
``scene.json``; ``render_sample.py`` regenerates it (needs ``bpy``; this module must not import it).
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_SCENE_DIR: Path = Path(__file__).resolve().parent / "data"

__all__ = ["SAMPLE_SCENE_DIR"]
