"""NeuS Reconstruct: neural surface reconstruction from photos, inside Blender.

The heavy lifting runs in a separate Python with PyTorch (``python -m engine fit``, see ``engine/PROTOCOL.md``);
this add-on imports the dataset's cameras, starts and watches the engine, and imports the mesh it produces.

Modules without bpy (usable and tested outside Blender): ``camera_math``, ``camera_source``, ``engine_process``,
``protocol``, ``ply_io``, ``run_files``. The rest is the thin bpy layer.
"""

bl_info = {  # read by Blender < 4.2; 4.2+ reads blender_manifest.toml
    "name": "NeuS Reconstruct",
    "author": "NeuS for Blender contributors",
    "version": (0, 1, 0),
    "blender": (3, 6, 0),
    "location": "3D Viewport > Sidebar > Reconstruct",
    "description": "Reconstruct textured meshes from photos with neural surfaces (NeuS)",
    "category": "Import-Export",
}

try:
    import bpy
except ImportError:  # outside Blender: only the bpy-free modules are usable
    bpy = None

if bpy is not None:
    from bpy.app.handlers import persistent

    from . import operators, preferences, properties, reconstruct, ui

    classes = (*properties.classes, *preferences.classes, *operators.classes, *ui.classes)

    @persistent
    def _reset_stale_status(_dummy=None) -> None:
        """A .blend saved mid-run says "running"; no engine survives a file load, so reset that."""
        if reconstruct.is_running():
            return
        for scene in bpy.data.scenes:
            s = getattr(scene, "neus", None)
            if s is not None and s.running:
                s.running = False
                s.state = "idle"
else:
    classes = ()


def register() -> None:
    if bpy is None:
        raise RuntimeError("neus_blender_addon.register() needs Blender (the bpy module)")
    for cls in classes:
        bpy.utils.register_class(cls)
    properties.register()
    if _reset_stale_status not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_reset_stale_status)


def unregister() -> None:
    if bpy is None:
        return
    reconstruct.shutdown()  # never leave an engine running without its add-on
    if _reset_stale_status in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_reset_stale_status)
    properties.unregister()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
