"""True scale in the sidebar: two dataset cameras and the distance between them in metres -> ``scale.json``.

The file is written into the dataset folder by the project's numpy-only ``datasets.scale_file`` (vendored), so a
later camera import and the engine's ``fit`` (``metres_per_unit`` in normalization.json) use the same scale; the
dataset's parent empty is rescaled at once, so cameras, region and meshes show in metres.
"""

# No `from __future__ import annotations`: Blender reads the property annotations as objects.
from pathlib import Path

import bpy
from bpy.props import FloatProperty, PointerProperty

from . import blender_cameras
from .core import camera_source
from .core.errors import AddonError
from .scene_tools import current_dataset
from .ui import SubPanel


def _dataset_parent(context):
    dataset = current_dataset(context)
    coll = blender_cameras.dataset_collection(context.scene, dataset, create=False) if dataset else None
    return blender_cameras.find_frame_empty(coll) if coll is not None else None


def _is_dataset_camera(_settings, obj) -> bool:
    return obj.type == "CAMERA" and blender_cameras.VIEW_PROP in obj


class NEUS_PG_true_scale(bpy.types.PropertyGroup):
    """The known distance the artist enters (``scene.neus_scale``)."""

    camera_a: PointerProperty(name="Camera A", type=bpy.types.Object, poll=_is_dataset_camera,
                              description="One of the two imported dataset cameras whose distance you know")
    camera_b: PointerProperty(name="Camera B", type=bpy.types.Object, poll=_is_dataset_camera,
                              description="The other camera")
    distance: FloatProperty(name="Distance (m)", description="Distance between the two cameras, in metres",
                            default=1.0, min=0.0, soft_min=0.001, soft_max=100.0, precision=4)


def dataset_name_of(cams, camera: bpy.types.Object) -> str:
    """The dataset's image name of an imported camera object (its view index)."""
    view = int(camera[blender_cameras.VIEW_PROP])
    if not 0 <= view < len(cams.names):
        raise AddonError(f"{camera.name} is not one of the {len(cams.names)} cameras of {cams.root}")
    return cams.names[view]


def set_known_distance(scene, directory: str, data_format: str, camera_a, camera_b, metres: float) -> float:
    """Writes ``scale.json`` for the two camera objects into the dataset ``directory`` and shows the dataset in
    metres. Returns metres per world unit. Raises AddonError (bad names, distance, cameras of another dataset, a
    read-only folder), with the first line of the problem."""
    dataset = camera_source.dataset_name(directory)
    coll = blender_cameras.dataset_collection(scene, dataset, create=False)
    parent = blender_cameras.find_frame_empty(coll) if coll is not None else None
    for camera in (camera_a, camera_b):
        if camera is None or parent is None or camera.parent != parent:
            raise AddonError(f"{getattr(camera, 'name', 'a camera')} is not an imported camera of {dataset!r}: "
                             "import the cameras and pick two of them")
    try:
        cams = camera_source.load_camera_set(directory, data_format)
        scale_file = camera_source.datasets_module("scale_file")
        known = scale_file.write_known_distance(cams.root, cams.names, dataset_name_of(cams, camera_a),
                                                dataset_name_of(cams, camera_b), metres)
        metres_per_unit = scale_file.metres_per_unit(cams, known)
        blender_cameras.set_true_scale(scene, dataset, metres_per_unit)
    except (AddonError, ValueError, OSError) as e:  # also DatasetError (bad names or distance), a read-only folder
        raise AddonError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    return metres_per_unit


class NEUS_OT_set_scale(bpy.types.Operator):
    """Save the known distance with the dataset (scale.json) and show the scene in metres; Reconstruct then
    records it, so the mesh comes in metres too"""

    bl_idname = "neus.set_scale"
    bl_label = "Set Scale"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        t = context.scene.neus_scale
        return t.camera_a is not None and t.camera_b is not None and t.distance > 0

    def execute(self, context):
        t, s = context.scene.neus_scale, context.scene.neus
        directory = bpy.path.abspath(s.data_dir)
        try:
            metres_per_unit = set_known_distance(context.scene, directory, s.data_format, t.camera_a, t.camera_b,
                                                 t.distance)
        except AddonError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"True scale saved in {Path(directory) / 'scale.json'}: 1 dataset unit = "
                              f"{metres_per_unit:.6g} m")
        return {"FINISHED"}


class NEUS_PT_true_scale(SubPanel, bpy.types.Panel):
    """Known distance between two cameras -> the scene and the mesh in metres."""

    bl_idname = "NEUS_PT_true_scale"
    bl_label = "True Scale"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout, _col = self.prop_column(context, context.scene.neus_scale, ("camera_a", "camera_b", "distance"))
        layout.operator("neus.set_scale", icon="DRIVER_DISTANCE")
        metres = blender_cameras.metres_per_unit(_dataset_parent(context))
        if metres is not None:
            layout.label(text=f"In metres: 1 dataset unit = {metres:.6g} m", icon="CHECKMARK")


classes = (NEUS_PG_true_scale, NEUS_OT_set_scale, NEUS_PT_true_scale)


def register() -> None:
    bpy.types.Scene.neus_scale = PointerProperty(type=NEUS_PG_true_scale)


def unregister() -> None:
    del bpy.types.Scene.neus_scale
