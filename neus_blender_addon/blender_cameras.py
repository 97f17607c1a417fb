"""Dataset cameras -> Blender: one parent empty per dataset, camera objects, photos, sparse points, region.

Layout of a dataset ``D`` (collection names are global in Blender, so the sub-collections carry the name)::

    D                     collection: the parent empty "D frame" and the region object "D region"
      D cameras           camera objects (+ image planes, + "D sparse points" for COLMAP)
      D previews          live preview meshes of a run
      D results           meshes of finished runs

The parent's ``matrix_world`` is the upright rotation (the cameras' mean up onto +Z) after the frame matrix
(identity for the normalized frame, ``scale_mat`` for the dataset's world frame). Every child sits in the cameras'
normalized frame, as the engine works; the engine's own frames are never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from . import blender_mesh
from .core import camera_math, camera_source, region
from .core.errors import AddonError, as_addon_error

FRAME_EMPTY_PROP = "neus_frame_empty"  # marks the dataset's parent empty
SCALE_MAT_PROP = "neus_scale_mat"  # on the parent: 16 floats, row-major, the cameras' normalized -> world
UP_PROP = "neus_up"  # on the parent: the cameras' mean up (3 floats) in their normalized frame
FRAME_PROP = "neus_frame"  # on the parent: "normalized" or "world", the frame its matrix shows
VIEW_PROP = "neus_view"  # index of the dataset view a camera object shows
PLANE_PROP = "neus_image_plane"  # marks an image plane (child of its camera)
POINTS_PROP = "neus_sparse_points"  # marks the sparse point cloud
REGION_PROP = "neus_region"  # marks the editable region object
REGION_NOTES_PROP = "neus_region_notes"  # on the region object: why the automatic region is uncertain (lines)
METRES_PROP = "neus_metres_per_unit"  # on the parent: metres per world unit (true scale); absent without one
KINDS = ("cameras", "previews", "results")
POINTS_NODE_GROUP = "NeuS sparse points"
POINT_RADIUS = 0.004  # normalized-frame units: the object fits the unit sphere


@dataclass
class ImportOptions:
    """What a camera import creates and changes (the File > Import side panel and the sidebar's redo panel)."""

    every: int = 1
    """Import every k-th view of the (subset of) views; 1 imports them all."""
    subset: str = ""
    """0-based view indices and ranges to import, e.g. ``0-9, 12``; empty for all views."""
    display_size: float = 0.2
    """Size of the camera frustums, in normalized-frame units (the object fits the unit sphere)."""
    backgrounds: bool = True
    """Show each view's photo as its camera's background image."""
    background_alpha: float = 0.6
    """Opacity of the background photos."""
    image_planes: bool = False
    """Add a textured plane with the photo in front of each camera."""
    image_plane_depth: float = 0.5
    """Distance of the image planes from their cameras, in normalized-frame units."""
    point_cloud: bool = True
    """Import the sparse point cloud where the format has one (COLMAP ``points3D``)."""
    set_render: bool = False
    """Set the scene's render resolution and pixel aspect to the photos' (off: the scene's are kept)."""
    set_active_camera: bool = False
    """Make the first imported camera the scene camera (off: the scene camera is kept)."""


@dataclass
class CameraImport:
    collection: bpy.types.Collection  # the dataset collection
    cameras: list[bpy.types.Object]
    parent: bpy.types.Object
    converted: camera_math.SceneCameras
    views: list[int]  # dataset view index of each camera
    region: bpy.types.Object
    points: bpy.types.Object | None = None
    planes: list[bpy.types.Object] = field(default_factory=list)


def to_matrix(a: np.ndarray) -> Matrix:
    return Matrix([[float(x) for x in row] for row in np.asarray(a, dtype=np.float64)])


def to_numpy(m: Matrix) -> np.ndarray:
    return np.array([list(row) for row in m], dtype=np.float64)


def dataset_collection(scene: bpy.types.Scene, name: str, create: bool = True) -> bpy.types.Collection | None:
    """The collection called ``name`` (created and linked under the scene's collection if needed)."""
    coll = bpy.data.collections.get(name)
    if coll is None:
        if not create:
            return None
        coll = bpy.data.collections.new(name)
    if not any(c == coll for c in scene.collection.children_recursive):  # the artist may have nested it
        scene.collection.children.link(coll)
    return coll


def sub_collection(scene: bpy.types.Scene, dataset: str, kind: str) -> bpy.types.Collection:
    """``"<dataset> <kind>"`` under the dataset's collection (``kind``: cameras, previews or results)."""
    if kind not in KINDS:
        raise AddonError(f"unknown sub-collection '{kind}' (expected one of {', '.join(KINDS)})")
    parent = dataset_collection(scene, dataset)
    name = f"{dataset} {kind}"
    coll = bpy.data.collections.get(name) or bpy.data.collections.new(name)
    if parent.children.find(coll.name) < 0:
        parent.children.link(coll)
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
    for obj in collection.all_objects:
        if obj.get(FRAME_EMPTY_PROP):
            return obj
    return None


def stored_matrix(obj: bpy.types.Object, key: str = SCALE_MAT_PROP) -> np.ndarray | None:
    value = obj.get(key) if obj is not None else None
    return None if value is None else np.array(list(value), dtype=np.float64).reshape(4, 4)


def metres_per_unit(parent: bpy.types.Object | None) -> float | None:
    """The true scale recorded on a dataset's parent (metres per world unit), or None."""
    value = parent.get(METRES_PROP) if parent is not None else None
    return None if value is None else float(value)


def frame_parent(scene: bpy.types.Scene, dataset: str, frame: str, scale_mat: np.ndarray | None = None,
                 up: np.ndarray | None = None, replace: bool = False,
                 metres: float | None = None) -> bpy.types.Object:
    """The dataset's parent empty, created when missing.

    ``scale_mat`` and ``up`` are the cameras' (normalized -> world, and mean up in the normalized frame); they
    are recorded on the first call or when ``replace`` is set (a camera import), otherwise the recorded ones
    stay. ``metres`` (metres per world unit: the dataset's true scale) is recorded with them, and a parent that
    has one shows everything in metres (``camera_math.parent_matrix``). The matrix is set on creation, on
    ``replace`` and when the frame changes, so an artist who moved the whole dataset keeps that placement when
    results arrive.
    """
    coll = dataset_collection(scene, dataset)
    empty = find_frame_empty(coll)
    created = empty is None
    if created:
        empty = bpy.data.objects.new(f"{dataset} frame", None)
        empty[FRAME_EMPTY_PROP] = True
        empty.empty_display_type = "PLAIN_AXES"
        empty.empty_display_size = 0.25
        coll.objects.link(empty)
    if replace or SCALE_MAT_PROP not in empty:
        S = camera_math.check_scale_mat(np.eye(4) if scale_mat is None else scale_mat)
        empty[SCALE_MAT_PROP] = [float(x) for x in S.reshape(-1)]
    if replace or UP_PROP not in empty:
        empty[UP_PROP] = [float(x) for x in (np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up))]
    if created or replace:
        if metres is None:
            empty.pop(METRES_PROP, None)
        else:
            empty[METRES_PROP] = float(metres)
    if created or replace or empty.get(FRAME_PROP) != frame:
        up_vec = np.array(list(empty[UP_PROP]), dtype=np.float64)
        empty.matrix_world = to_matrix(camera_math.parent_matrix(stored_matrix(empty), frame, up_vec,
                                                                 metres_per_unit(empty)))
        empty[FRAME_PROP] = frame
    return empty


def shown_scale(parent: bpy.types.Object) -> float:
    """World units of the scene per normalized-frame unit under ``parent`` (Blender clips in scene units)."""
    S, frame = stored_matrix(parent), parent.get(FRAME_PROP, "normalized")
    return (camera_math.frame_scale(camera_math.frame_matrix(S, frame))
            * camera_math.metric_factor(S, frame, metres_per_unit(parent)))


def set_true_scale(scene: bpy.types.Scene, dataset: str, metres: float | None) -> bpy.types.Object:
    """Records the dataset's true scale (metres per world unit, None to drop it) on its parent and shows the
    dataset in metres: the parent's matrix changes, everything under it (cameras, region, meshes) follows, and
    the cameras' clipping distances are scaled with it."""
    coll = dataset_collection(scene, dataset, create=False)
    parent = find_frame_empty(coll) if coll is not None else None
    if parent is None:
        raise AddonError(f"no cameras of {dataset!r} in this scene: import them first")
    before = shown_scale(parent)
    if metres is None:
        parent.pop(METRES_PROP, None)
    else:
        parent[METRES_PROP] = float(metres)
    frame = parent.get(FRAME_PROP, "normalized")
    up_vec = np.array(list(parent[UP_PROP]), dtype=np.float64)
    parent.matrix_world = to_matrix(camera_math.parent_matrix(stored_matrix(parent), frame, up_vec,
                                                              metres_per_unit(parent)))
    ratio = shown_scale(parent) / before
    for obj in coll.all_objects:
        if VIEW_PROP in obj and obj.type == "CAMERA":
            obj.data.clip_start *= ratio
            obj.data.clip_end *= ratio
    for layer in scene.view_layers:
        layer.update()
    return parent


def place_in_frame(obj: bpy.types.Object, matrix: np.ndarray | Matrix, parent: bpy.types.Object | None) -> None:
    """Puts ``obj`` at ``matrix`` in the normalized frame, i.e. relative to ``parent`` when given."""
    M = matrix if isinstance(matrix, Matrix) else to_matrix(matrix)
    obj.parent = parent
    obj.matrix_parent_inverse = Matrix.Identity(4)
    obj.matrix_basis = M


def attach_result(obj: bpy.types.Object, scene: bpy.types.Scene, dataset: str, frame: str,
                  run_scale_mat: np.ndarray, up: np.ndarray | None = None,
                  metres: float | None = None) -> bpy.types.Object:
    """Parents a mesh in a run's normalized frame to the dataset's parent, lined up with the cameras.

    A run that chose its own region has its own ``scale_mat``; the mesh's local matrix maps it back to the
    cameras' normalized frame (identity when both agree). ``metres`` (the run's ``metres_per_unit``) shows the
    dataset in metres when its parent has no true scale yet. Returns the parent.
    """
    parent = frame_parent(scene, dataset, frame, run_scale_mat, up)
    if metres is not None and metres_per_unit(parent) is None:
        set_true_scale(scene, dataset, metres)
    place_in_frame(obj, camera_math.result_matrix(stored_matrix(parent), run_scale_mat), parent)
    return parent


def apply_render_settings(scene: bpy.types.Scene, render: camera_math.RenderSettings) -> None:
    scene.render.resolution_x = render.resolution_x
    scene.render.resolution_y = render.resolution_y
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = render.pixel_aspect_x
    scene.render.pixel_aspect_y = render.pixel_aspect_y


def render_matches(scene: bpy.types.Scene, render: camera_math.RenderSettings) -> bool:
    """Whether the scene renders what the cameras were converted for (size and pixel aspect)."""
    r = scene.render
    size = (round(r.resolution_x * r.resolution_percentage / 100), round(r.resolution_y * r.resolution_percentage
                                                                          / 100))
    return (size == (render.resolution_x, render.resolution_y)
            and abs(r.pixel_aspect_y / r.pixel_aspect_x - render.ycor) < 1e-6)


def apply_lens(cam: bpy.types.Camera, lens: camera_math.BlenderLens) -> None:
    cam.type = "PERSP"
    cam.lens_unit = "MILLIMETERS"
    cam.sensor_fit = lens.sensor_fit
    cam.sensor_width = lens.sensor_width
    cam.sensor_height = lens.sensor_height
    cam.lens = lens.lens
    cam.shift_x = lens.shift_x
    cam.shift_y = lens.shift_y


def load_image(image_path: str | None) -> bpy.types.Image | None:
    """The photo as an image data-block (loaded lazily, once per file), or None when the file is missing."""
    if not image_path or not Path(image_path).is_file():
        return None
    return bpy.data.images.load(str(Path(image_path).resolve()), check_existing=True)


def set_background_image(cam: bpy.types.Camera, image_path: str | None, alpha: float = 0.6) -> None:
    """Shows the view's photo behind the camera."""
    img = load_image(image_path)
    if img is None:
        return
    cam.background_images.clear()
    bg = cam.background_images.new()
    bg.image = img
    bg.frame_method = "STRETCH"  # the photo spans exactly the camera frame (same size as the render)
    bg.alpha = alpha
    cam.show_background_images = True


def photo_material(img: bpy.types.Image) -> bpy.types.Material:
    """An emissive material showing ``img`` as it is (shared by the planes of one photo)."""
    name = f"NeuS photo {img.name}"
    mat = bpy.data.materials.get(name)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = img
    emit = nodes.new("ShaderNodeEmission")
    out = nodes.new("ShaderNodeOutputMaterial")
    tex.location, emit.location, out.location = (-300, 0), (0, 0), (200, 0)
    links.new(tex.outputs["Color"], emit.inputs["Color"])
    links.new(emit.outputs["Emission"], out.inputs["Surface"])
    return mat


def create_image_plane(cam_obj: bpy.types.Object, K: np.ndarray, width: int, height: int, depth: float,
                       collection: bpy.types.Collection) -> bpy.types.Object | None:
    """A quad showing the camera's photo at ``depth`` in front of it, exactly filling its view (child of the
    camera, so it follows it)."""
    img = load_image(cam_obj.get("neus_image"))
    if img is None:
        return None
    corners = camera_math.image_plane_corners(K, width, height, depth)
    me = bpy.data.meshes.new(f"{cam_obj.name} photo")
    me.from_pydata([tuple(map(float, c)) for c in corners], [], [(3, 2, 1, 0)])  # faces the camera
    uv = me.uv_layers.new(name="UVMap")
    corner_uv = {0: (0.0, 1.0), 1: (1.0, 1.0), 2: (1.0, 0.0), 3: (0.0, 0.0)}
    for loop in me.loops:
        uv.data[loop.index].uv = corner_uv[loop.vertex_index]
    me.materials.append(photo_material(img))
    obj = bpy.data.objects.new(f"{cam_obj.name} photo", me)
    obj[PLANE_PROP] = True
    collection.objects.link(obj)
    place_in_frame(obj, Matrix.Identity(4), cam_obj)
    return obj


def create_point_cloud(name: str, points_world: np.ndarray, colors: np.ndarray, scale_mat: np.ndarray,
                       collection: bpy.types.Collection, parent: bpy.types.Object) -> bpy.types.Object:
    """Sparse points (P, 3) in the world frame -> a vertex-only mesh in the cameras' normalized frame, their
    colours (P, 3) uint8 as the point colour attribute ``Col``."""
    S = np.asarray(scale_mat, dtype=np.float64)
    homo = np.concatenate([points_world, np.ones((len(points_world), 1))], axis=1)
    local = (np.linalg.inv(S) @ homo.T).T[:, :3]
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(local))
    me.vertices.foreach_set("co", np.ascontiguousarray(local, dtype=np.float32).reshape(-1))
    me.update()
    attr = me.color_attributes.new("Col", "BYTE_COLOR", "POINT")
    rgba = np.concatenate([np.asarray(colors, np.float32) / 255.0, np.ones((len(local), 1), np.float32)], axis=1)
    attr.data.foreach_set("color_srgb", np.ascontiguousarray(rgba).reshape(-1))
    me.materials.append(blender_mesh.vertex_color_material())
    obj = bpy.data.objects.new(name, me)
    obj[POINTS_PROP] = True
    # Blender draws no loose vertices in Object Mode: a Mesh to Points modifier shows (and renders) them.
    obj.modifiers.new("Points", "NODES").node_group = points_node_group()
    collection.objects.link(obj)
    place_in_frame(obj, Matrix.Identity(4), parent)
    return obj


def points_node_group() -> bpy.types.NodeTree:
    """Geometry nodes turning a mesh's vertices into points of radius ``POINT_RADIUS`` (shared, made once)."""
    ng = bpy.data.node_groups.get(POINTS_NODE_GROUP)
    if ng is not None and ng.bl_idname == "GeometryNodeTree":
        return ng
    ng = bpy.data.node_groups.new(POINTS_NODE_GROUP, "GeometryNodeTree")
    ng.interface.new_socket(name="Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    ng.interface.new_socket(name="Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    group_in, group_out = ng.nodes.new("NodeGroupInput"), ng.nodes.new("NodeGroupOutput")
    to_points = ng.nodes.new("GeometryNodeMeshToPoints")
    to_points.inputs["Radius"].default_value = POINT_RADIUS
    group_in.location, to_points.location, group_out.location = (-300, 0), (0, 0), (300, 0)
    ng.links.new(group_in.outputs["Geometry"], to_points.inputs["Mesh"])
    ng.links.new(to_points.outputs["Points"], group_out.inputs["Geometry"])
    return ng


def find_region(collection: bpy.types.Collection) -> bpy.types.Object | None:
    for obj in collection.all_objects:
        if obj.get(REGION_PROP):
            return obj
    return None


def ensure_region(collection: bpy.types.Collection, parent: bpy.types.Object) -> bpy.types.Object:
    """The dataset's region object: created as the automatic region (the unit sphere of the normalized frame);
    an existing one, perhaps moved, scaled or made a box by the artist, is kept as it is."""
    obj = find_region(collection)
    if obj is not None:
        return obj
    obj = bpy.data.objects.new(f"{collection.name} region", None)
    obj[REGION_PROP] = True
    obj.empty_display_type = "SPHERE"
    obj.empty_display_size = 1.0
    obj.show_in_front = True  # visible through the reconstructed mesh while the artist edits it
    collection.objects.link(obj)
    place_in_frame(obj, Matrix.Identity(4), parent)
    return obj


def region_local_matrix(obj: bpy.types.Object, parent: bpy.types.Object) -> np.ndarray:
    """(4, 4) the region object relative to the dataset's parent (exact when it is still its child)."""
    if obj.parent == parent:
        return to_numpy(obj.matrix_parent_inverse @ obj.matrix_basis)
    return to_numpy(parent.matrix_world.inverted() @ obj.matrix_world)


def user_region(scene: bpy.types.Scene, dataset: str) -> region.Region | None:
    """The region the artist set for ``dataset`` in the world frame; None when untouched (automatic) or absent.

    Raises:
        AddonError: a region object the engine cannot use (another empty shape, scaled flat).
    """
    coll = dataset_collection(scene, dataset, create=False)
    if coll is None:
        return None
    obj, parent = find_region(coll), find_frame_empty(coll)
    if obj is None or parent is None or obj.type != "EMPTY":
        return None
    local = region_local_matrix(obj, parent)
    if region.is_automatic(obj.empty_display_type, local, obj.empty_display_size):
        return None
    try:
        return region.region_in_world(obj.empty_display_type, local, stored_matrix(parent),
                                      obj.empty_display_size)
    except AddonError as e:
        raise AddonError(f"{obj.name}: {e}") from None


def user_region_or_none(scene: bpy.types.Scene, dataset: str | None) -> region.Region | None:
    """``user_region``, with a region object the engine cannot use counted as the artist's (not automatic)."""
    if not dataset:
        return None
    try:
        return user_region(scene, dataset)
    except AddonError:
        return region.Region("sphere", (0.0, 0.0, 0.0), radius=1.0)


def reset_region(scene: bpy.types.Scene, dataset: str) -> bpy.types.Object | None:
    """Puts the region object back to the automatic region (unit sphere)."""
    coll = dataset_collection(scene, dataset, create=False)
    obj = find_region(coll) if coll is not None else None
    parent = find_frame_empty(coll) if coll is not None else None
    if obj is None:
        return None
    obj.empty_display_type = "SPHERE"
    obj.empty_display_size = 1.0
    place_in_frame(obj, Matrix.Identity(4), parent)
    return obj


def import_cameras(scene: bpy.types.Scene, directory: str | Path, frame: str = "normalized",
                   data_format: str = "auto", options: ImportOptions | None = None,
                   cameras_file: str | Path | None = None) -> CameraImport:
    """Creates the cameras (and what ``options`` asks for) of the dataset at ``directory``.

    Raises:
        AddonError: bad dataset (``"<path>: <problem>"``), a bad view subset, cameras Blender cannot hold, or the
            camera loader missing.
    """
    with as_addon_error(ValueError):  # datasets' geometry checks (through camera_math) on cameras Blender cannot hold
        return _import_cameras(scene, directory, frame, data_format, options, cameras_file)


def _import_cameras(scene: bpy.types.Scene, directory: str | Path, frame: str, data_format: str,
                    options: ImportOptions | None, cameras_file: str | Path | None) -> CameraImport:
    options = options or ImportOptions()
    camera_math.frame_matrix(np.eye(4), frame)  # validates the frame name before any work
    cams = camera_source.load_camera_set(directory, data_format, cameras_file)
    views = camera_math.select_views(len(cams.names), options.every, options.subset)
    if not views:
        raise AddonError(f"{directory}: no view selected")
    chosen = cams.subset(views)
    converted = camera_math.convert_camera_set(chosen)
    names = camera_source.view_names([c.name for c in converted.cameras])
    points = None
    if options.point_cloud and cams.format == "colmap":
        points = camera_source.load_sparse_points(cams.root)
    return create_cameras(scene, converted, names, camera_source.dataset_name(directory), frame, options,
                          up=np.asarray(cams.up), views=views, points=points,
                          metres_per_unit_of_dataset=getattr(cams, "metres_per_unit", None),
                          region_notes=tuple(getattr(cams, "region_notes", ())))


def create_cameras(scene: bpy.types.Scene, converted: camera_math.SceneCameras, names: list[str],
                   collection_name: str, frame: str = "normalized", options: ImportOptions | None = None,
                   up: np.ndarray | None = None, views: list[int] | None = None,
                   points: tuple[np.ndarray, np.ndarray] | None = None,
                   metres_per_unit_of_dataset: float | None = None,
                   region_notes: tuple[str, ...] = ()) -> CameraImport:
    """Camera objects for converted cameras, under the parent of dataset ``collection_name``.

    Re-importing replaces the cameras, image planes and sparse points of the dataset (the region object and
    results stay). ``up`` (3,) is the cameras' mean up in the normalized frame (default: the mean of these
    cameras' up axes); ``views`` the dataset index of each camera (default 0..N-1). ``metres_per_unit_of_dataset``
    (the dataset's true scale) shows the dataset in metres; ``region_notes`` (why the automatic region is uncertain)
    are kept on the region object for the sidebar.
    """
    options = options or ImportOptions()
    if up is None:
        ups = np.array([c.matrix_world[:3, 1] for c in converted.cameras]).reshape(-1, 3)
        up = ups.mean(axis=0) if len(ups) else np.array([0.0, 0.0, 1.0])
    views = list(range(len(converted.cameras))) if views is None else list(views)
    coll = dataset_collection(scene, collection_name)
    for obj in list(coll.all_objects):
        if VIEW_PROP in obj or PLANE_PROP in obj or POINTS_PROP in obj:
            remove_object(obj)
    parent = frame_parent(scene, collection_name, frame, converted.scale_mat, up, replace=True,
                          metres=metres_per_unit_of_dataset)
    region_obj = ensure_region(coll, parent)
    region_obj[REGION_NOTES_PROP] = "\n".join(region_notes)
    cam_coll = sub_collection(scene, collection_name, "cameras")
    # Blender clips in world units, unaffected by the parent's scale.
    clip_scale = shown_scale(parent)
    if options.set_render:
        apply_render_settings(scene, converted.render)
    objects, planes = [], []
    for bc, name, view in zip(converted.cameras, names, views, strict=True):
        cam = bpy.data.cameras.new(name)
        apply_lens(cam, bc.lens)
        cam.clip_start = converted.clip_start * clip_scale
        cam.clip_end = converted.clip_end * clip_scale
        cam.display_size = options.display_size
        if options.backgrounds:
            set_background_image(cam, bc.image_path, options.background_alpha)
        obj = bpy.data.objects.new(name, cam)
        obj[VIEW_PROP] = int(view)
        if bc.image_path:
            obj["neus_image"] = bc.image_path
        cam_coll.objects.link(obj)
        place_in_frame(obj, bc.matrix_world, parent)
        objects.append(obj)
        if options.image_planes:
            K = camera_math.blender_to_intrinsics(bc.lens, converted.render)  # what the Blender camera shows
            plane = create_image_plane(obj, K, converted.render.resolution_x, converted.render.resolution_y,
                                       options.image_plane_depth, cam_coll)
            if plane is not None:
                planes.append(plane)
    cloud = None
    if points is not None and len(points[0]):
        cloud = create_point_cloud(f"{collection_name} sparse points", points[0], points[1], converted.scale_mat,
                                   cam_coll, parent)
    if objects and options.set_active_camera:
        scene.camera = objects[0]
    for layer in scene.view_layers:  # evaluate matrix_world now (callers project through these cameras)
        layer.update()
    return CameraImport(coll, objects, parent, converted, views, region_obj, cloud, planes)
