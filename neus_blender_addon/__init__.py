"""NeuS Reconstruct: neural surface reconstruction from photos, inside Blender.

The heavy lifting runs in a separate Python with PyTorch (``python -m engine fit``, see ``engine/PROTOCOL.md``);
this add-on imports the dataset's cameras, starts and watches the engine, and imports the mesh it produces.

Modules without bpy (in ``core/``, usable and tested outside Blender): ``camera_math``, ``camera_source``,
``choices``, ``engine_process``, ``errors``, ``job_state``, ``photo_source``, ``protocol``, ``ply_io``, ``region``,
``run_files``, ``run_state``, ``solve_state``. The rest is the thin bpy layer; ``job_driver`` runs the one engine
job (a reconstruction or a camera solve).
"""

import atexit

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

    from . import (
        import_dataset,
        job_driver,
        operators,
        preferences,
        properties,
        scene_tools,
        true_scale,
        ui,
    )

    classes = (*properties.classes, *preferences.classes, *operators.classes, *import_dataset.classes, *ui.classes,
               *scene_tools.classes, *true_scale.classes)

    @persistent
    def _reset_stale_status(_dummy=None) -> None:
        """After File > Open / New: a running job (reconstruction or camera solve) follows the new file's scene
        (its timer is persistent); otherwise a .blend saved mid-run says "running" although no engine belongs to
        it, so reset that."""
        if job_driver.is_running():
            job_driver.follow_loaded_file(bpy.context.scene)
            return
        for scene in bpy.data.scenes:
            s = getattr(scene, "neus", None)
            if s is not None and s.running:
                s.running = False
                s.state = "idle"
else:
    classes = ()

_registered = False
_exit_hook_installed = False


def _unregister_at_exit() -> None:
    """A script that imports bpy and registers the add-on may end without unregistering it: the bpy module then
    never finishes shutting down while Python callbacks (handlers, timers, classes) stay registered, and an engine
    would outlive it. atexit runs this before bpy's own exit hook (registered earlier, so it runs later). Blender
    itself disables add-ons before exiting, so there this finds nothing left to do."""
    if not _registered:
        return
    try:
        unregister()
    except Exception as e:  # noqa: BLE001 -- exiting anyway: say why, never hang or raise at exit
        print(f"[neus] unregister at exit failed: {e}", flush=True)


def register() -> None:
    global _registered, _exit_hook_installed
    if bpy is None:
        raise RuntimeError("neus_blender_addon.register() needs Blender (the bpy module)")
    if not _exit_hook_installed:
        atexit.register(_unregister_at_exit)
        _exit_hook_installed = True
    for cls in classes:
        bpy.utils.register_class(cls)
    properties.register()
    true_scale.register()
    import_dataset.register()
    if _reset_stale_status not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_reset_stale_status)
    _registered = True


def unregister() -> None:
    global _registered
    if bpy is None:
        return
    _registered = False
    job_driver.shutdown()  # never leave an engine running without its add-on
    operators.stop_engine_check()
    if _reset_stale_status in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_reset_stale_status)
    import_dataset.unregister()
    true_scale.unregister()
    properties.unregister()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
