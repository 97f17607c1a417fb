"""Dataset cameras -> Blender camera objects (one per view, in a collection named after the dataset)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from . import camera_math, camera_source

FRAME_EMPTY_PROP = "neus_frame_empty"  # marks the empty that carries scale_mat
VIEW_PROP = "neus_view"  # index of the view a camera object shows
SCALE_MAT_PROP = "neus_scale_mat"  # 16 floats, row-major, stored on the dataset collection
CAMERA_DISPLAY_SIZE = 0.2  # normalized-frame units; the object is in the unit sphere


@dataclass
class CameraImport:
    collection: bpy.types.Collection
    cameras: list[bpy.types.Object]
    frame_empty: bpy.types.Object | None
    converted: camera_math.SceneCameras


def to_matrix(a: np.ndarray) -> Matrix:
    return Matrix([[float(x) for x in row] for row in np.asarray(a, dtype=np.float64)])


def dataset_collection(scene: bpy.types.Scene, name: str, create: bool = True) -> bpy.types.Collection | None:
    """The collection called ``name`` (created and linked under the scene's collection if needed)."""
    coll = bpy.data.collections.get(name)
    if coll is None:
        if not create:
            return None
        coll = bpy.data.collections.new(name)
    if coll.name not in scene.collection.children:
        scene.collection.children.link(coll)
    return coll


def remove_object(obj: bpy.types.Object) -> None:
    """Deletes an object and its data-block when nothing else uses it."""
    data = obj.data
    bpy.data.objects.remove(obj, do_unlink=True)
    if data is not None and data.users == 0:
        if isinstance(data, bpy.types.Camera):
            bpy.data.cameras.remove(data)
        elif isinstance(data, bpy.types.Mesh):
            bpy.data.meshes.remove(data)


def find_frame_empty(collection: bpy.types.Collection) -> bpy.types.Object | None:
    for obj in collection.objects:
        if obj.get(FRAME_EMPTY_PROP):
            return obj
    return None


def ensure_frame_empty(collection: bpy.types.Collection, scale_mat: np.ndarray) -> bpy.types.Object:
    """The empty of ``collection`` whose matrix is ``scale_mat`` (normalized -> world); children placed in the
    normalized frame then appear in the dataset's world frame."""
    M = camera_math.check_scale_mat(scale_mat)
    empty = find_frame_empty(collection)
    if empty is None:
        empty = bpy.data.objects.new(f"{collection.name} world frame", None)
        empty[FRAME_EMPTY_PROP] = True
        empty.empty_display_type = "SPHERE"  # a unit sphere = the normalized frame's bounding sphere
        collection.objects.link(empty)
    empty.matrix_world = to_matrix(M)
    collection[SCALE_MAT_PROP] = [float(x) for x in M.reshape(-1)]
    return empty


def place_in_frame(obj: bpy.types.Object, matrix: np.ndarray | Matrix, parent: bpy.types.Object | None) -> None:
    """Puts ``obj`` at ``matrix`` in the normalized frame, i.e. relative to ``parent`` when given."""
    M = matrix if isinstance(matrix, Matrix) else to_matrix(matrix)
    obj.parent = parent
    obj.matrix_parent_inverse = Matrix.Identity(4)
    obj.matrix_basis = M


def apply_render_settings(scene: bpy.types.Scene, render: camera_math.RenderSettings) -> None:
    scene.render.resolution_x = render.resolution_x
    scene.render.resolution_y = render.resolution_y
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = render.pixel_aspect_x
    scene.render.pixel_aspect_y = render.pixel_aspect_y


def apply_lens(cam: bpy.types.Camera, lens: camera_math.BlenderLens) -> None:
    cam.type = "PERSP"
    cam.lens_unit = "MILLIMETERS"
    cam.sensor_fit = lens.sensor_fit
    cam.sensor_width = lens.sensor_width
    cam.sensor_height = lens.sensor_height
    cam.lens = lens.lens
    cam.shift_x = lens.shift_x
    cam.shift_y = lens.shift_y


def set_background_image(cam: bpy.types.Camera, image_path: str | None) -> None:
    """Shows the view's photo behind the camera (loaded lazily; the same file is loaded once)."""
    if not image_path or not Path(image_path).is_file():
        return
    img = bpy.data.images.load(str(Path(image_path).resolve()), check_existing=True)
    cam.background_images.clear()
    bg = cam.background_images.new()
    bg.image = img
    bg.frame_method = "STRETCH"  # the photo spans exactly the camera frame (same size as the render)
    bg.alpha = 0.6
    cam.show_background_images = True


def import_cameras(scene: bpy.types.Scene, directory: str | Path, frame: str = "normalized",
                   data_format: str = "auto") -> CameraImport:
    """Creates one camera per view of the dataset at ``directory`` (see :func:`create_cameras`).

    Raises:
        ValueError: bad dataset (``DatasetError``: ``"<path>: <problem>"``) or cameras Blender cannot hold.
    """
    if frame not in ("normalized", "world"):
        raise ValueError(f"unknown frame '{frame}' (expected normalized or world)")
    cams = camera_source.load_camera_set(directory, data_format)
    converted = camera_math.convert_camera_set(cams)
    names = camera_source.view_names([c.name for c in converted.cameras])
    return create_cameras(scene, converted, names, camera_source.dataset_name(directory), frame)


def create_cameras(scene: bpy.types.Scene, converted: camera_math.SceneCameras, names: list[str],
                   collection_name: str, frame: str = "normalized") -> CameraImport:
    """Camera objects for converted cameras, in collection ``collection_name``.

    Re-importing replaces the cameras of the same collection. Sets the scene resolution and pixel aspect and
    makes the first camera active. ``frame="world"`` parents the cameras to an empty holding ``scale_mat``.
    """
    if frame not in ("normalized", "world"):
        raise ValueError(f"unknown frame '{frame}' (expected normalized or world)")
    coll = dataset_collection(scene, collection_name)
    for obj in list(coll.objects):
        if obj.type == "CAMERA" and VIEW_PROP in obj:
            remove_object(obj)
    empty = None
    if frame == "world":
        empty = ensure_frame_empty(coll, converted.scale_mat)
    else:
        # Keep the matrix available for a later world-frame mesh import.
        coll[SCALE_MAT_PROP] = [float(x) for x in converted.scale_mat.reshape(-1)]
    # Blender clips in world units, unaffected by the parent's scale.
    clip_scale = camera_math.frame_scale(converted.scale_mat) if frame == "world" else 1.0
    apply_render_settings(scene, converted.render)
    objects = []
    for i, (bc, name) in enumerate(zip(converted.cameras, names, strict=True)):
        cam = bpy.data.cameras.new(name)
        apply_lens(cam, bc.lens)
        cam.clip_start = converted.clip_start * clip_scale
        cam.clip_end = converted.clip_end * clip_scale
        cam.display_size = CAMERA_DISPLAY_SIZE
        set_background_image(cam, bc.image_path)
        obj = bpy.data.objects.new(name, cam)
        obj[VIEW_PROP] = i
        if bc.image_path:
            obj["neus_image"] = bc.image_path
        coll.objects.link(obj)
        place_in_frame(obj, bc.matrix_world, empty)
        objects.append(obj)
    if objects:
        scene.camera = objects[0]
    for layer in scene.view_layers:  # evaluate matrix_world now (callers project through these cameras)
        layer.update()
    return CameraImport(coll, objects, empty, converted)
