"""Engine meshes -> Blender objects: PLY with vertex colours (own reader), OBJ / glTF via Blender's importers."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from .core.errors import AddonError
from .core.ply_io import PlyMesh, read_ply
from .core.run_files import mesh_format

COLOR_ATTRIBUTE = "Col"
MATERIAL_NAME = "NeuS Vertex Colour"
RESULT_PROP = "neus_result"


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def mesh_from_ply(ply: PlyMesh, name: str) -> bpy.types.Mesh:
    """Builds a mesh data-block; vertex colours become a point-domain byte colour attribute ``Col``."""
    me = bpy.data.meshes.new(name)
    n = len(ply.vertices)
    me.vertices.add(n)
    me.vertices.foreach_set("co", np.ascontiguousarray(ply.vertices, dtype=np.float32).reshape(-1))
    if len(ply.face_sizes):
        me.loops.add(len(ply.face_indices))
        me.loops.foreach_set("vertex_index", np.ascontiguousarray(ply.face_indices, dtype=np.int32))
        me.polygons.add(len(ply.face_sizes))
        me.polygons.foreach_set("loop_start", ply.loop_starts)
        if bpy.app.version < (4, 0, 0):  # loop_total is derived from loop_start since 4.0
            me.polygons.foreach_set("loop_total", ply.face_sizes)
        me.polygons.foreach_set("use_smooth", np.ones(len(ply.face_sizes), dtype=bool))
    me.update(calc_edges=True)
    me.validate(verbose=False)
    if ply.colors is not None:
        attr = me.color_attributes.new(COLOR_ATTRIBUTE, "BYTE_COLOR", "POINT")
        rgba = np.ascontiguousarray(ply.colors, dtype=np.float32)
        if "color_srgb" in bpy.types.ByteColorAttributeValue.bl_rna.properties:  # Blender 3.4+
            attr.data.foreach_set("color_srgb", rgba.reshape(-1))
        else:  # older Blender: ``color`` is scene-linear
            lin = rgba.copy()
            lin[:, :3] = srgb_to_linear(rgba[:, :3])
            attr.data.foreach_set("color", lin.reshape(-1))
        me.color_attributes.active_color = attr
        me.color_attributes.render_color_index = me.color_attributes.active_color_index
    return me


def vertex_color_material(attribute: str = COLOR_ATTRIBUTE) -> bpy.types.Material:
    """A Principled BSDF fed by a Color Attribute node (shared by all results)."""
    mat = bpy.data.materials.get(MATERIAL_NAME)
    if mat is not None and mat.use_nodes:
        return mat
    mat = mat or bpy.data.materials.new(MATERIAL_NAME)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next((nd for nd in nodes if nd.type == "BSDF_PRINCIPLED"), None) or nodes.new("ShaderNodeBsdfPrincipled")
    out = next((nd for nd in nodes if nd.type == "OUTPUT_MATERIAL"), None) or nodes.new("ShaderNodeOutputMaterial")
    if not out.inputs["Surface"].is_linked:
        links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    col = nodes.new("ShaderNodeVertexColor")
    col.layer_name = attribute
    col.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(col.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.8
    return mat


def show_attribute_colors(screens, scene: bpy.types.Scene | None = None) -> int:
    """Solid shading by colour attribute in the 3D views of ``screens`` (and the Workbench render of ``scene``).

    Only on request (the Show Vertex Colours button): imports never change the artist's viewport shading.
    Returns the number of 3D views changed.
    """
    changed = 0
    for screen in screens:
        for area in screen.areas:
            if area.type != "VIEW_3D":
                continue
            for space in area.spaces:
                if space.type == "VIEW_3D":
                    space.shading.color_type = "VERTEX"
                    changed += 1
    if scene is not None:
        scene.display.shading.color_type = "VERTEX"
    return changed


FINGERPRINT_PROP = "neus_fingerprint"


def fingerprint(obj: bpy.types.Object) -> str:
    """A digest of what an artist may change on an imported object: its transform, modifiers, constraints,
    material slots, shape keys, mesh data-block and vertex positions."""
    parts: list[object] = [obj.name, obj.type, [round(x, 6) for row in obj.matrix_basis for x in row],
                           [(m.type, m.name) for m in obj.modifiers], [c.type for c in obj.constraints],
                           [s.material.name if s.material else "" for s in obj.material_slots]]
    me = obj.data
    if isinstance(me, bpy.types.Mesh):
        co = np.empty(len(me.vertices) * 3, dtype=np.float32)
        me.vertices.foreach_get("co", co)
        parts += [me.name, len(me.polygons), me.shape_keys is not None, hashlib.sha1(co.tobytes()).hexdigest()]
    return hashlib.sha1(repr(parts).encode()).hexdigest()


def stamp(obj: bpy.types.Object) -> None:
    """Marks ``obj`` as made by the add-on, as it is now (call again after placing it)."""
    obj[FINGERPRINT_PROP] = fingerprint(obj)


def is_untouched(obj: bpy.types.Object) -> bool:
    """The rule for replacing objects: only an object the add-on made (stamped) and nobody changed since."""
    return obj.get(FINGERPRINT_PROP) == fingerprint(obj)


def remove_named_object(name: str) -> bool:
    """Deletes the object called ``name`` (and its mesh data when unused) if the add-on made it and the artist
    has not changed it; returns whether the name is free now. A changed object is kept: the new one gets a
    numbered name instead."""
    obj = bpy.data.objects.get(name)
    if obj is None:
        return True
    if not is_untouched(obj):
        return False
    data = obj.data
    bpy.data.objects.remove(obj, do_unlink=True)
    if isinstance(data, bpy.types.Mesh) and data.users == 0:
        bpy.data.meshes.remove(data)
    return True


def _operator_context():
    """Timers run without a window in the context; importers need one (and its view layer) to link objects."""
    ctx = bpy.context
    if ctx.window is not None or not ctx.window_manager or not ctx.window_manager.windows:
        return contextlib.nullcontext()
    win = ctx.window_manager.windows[0]
    return ctx.temp_override(window=win, screen=win.screen)


def normal_maps_as_data(objects) -> int:
    """Marks the images feeding Normal Map nodes as Non-Color data (Blender's OBJ importer loads a ``map_Bump``
    normal map as sRGB, which bends every normal); returns how many images it changed."""
    changed = 0
    for o in objects:
        for slot in getattr(o, "material_slots", []):
            mat = slot.material
            if mat is None or not mat.use_nodes:
                continue
            for node in mat.node_tree.nodes:
                if node.bl_idname != "ShaderNodeNormalMap":
                    continue
                for link in node.inputs["Color"].links:
                    image = getattr(link.from_node, "image", None)
                    if image is not None and image.colorspace_settings.name != "Non-Color":
                        image.colorspace_settings.name = "Non-Color"
                        changed += 1
    return changed


def _import_with_operator(path: Path, fmt: str, gltf_z_up: bool) -> list[bpy.types.Object]:
    before = set(bpy.data.objects)
    with _operator_context():
        if fmt == "obj":
            # OBJ and glTF files from the engine are Y-up (each format's convention): the importers' default
            # axis conversion brings them back to the normalized frame's Z-up.
            bpy.ops.wm.obj_import(filepath=str(path))
        else:
            bpy.ops.import_scene.gltf(filepath=str(path))
    new = [o for o in bpy.data.objects if o not in before]
    normal_maps_as_data(new)
    if fmt == "gltf" and gltf_z_up:
        # For files holding raw Z-up coordinates (not the engine's): the glTF importer turns +Y-up into
        # Blender's +Z-up, (x, y, z) -> (x, -z, y), so undo that on the mesh data.
        undo = Matrix.Rotation(-np.pi / 2, 4, "X")
        for o in new:
            if o.type == "MESH" and o.parent is None:
                o.data.transform(undo)
                o.matrix_basis = Matrix.Identity(4)
    return new


def import_mesh(path: str | Path, name: str, collection: bpy.types.Collection,
                parent: bpy.types.Object | None = None, scene: bpy.types.Scene | None = None,
                gltf_z_up: bool = False) -> bpy.types.Object:
    """Imports a mesh file as object ``name`` (replacing an untouched object of that name the add-on made, see
    :func:`remove_named_object`) in the normalized
    frame, i.e. as a child of ``parent`` (the world-frame empty) when given.

    Raises:
        AddonError: unsupported or unreadable file, message naming the file.
    """
    try:
        return _import_mesh(Path(path), name, collection, parent, gltf_z_up)
    except (ValueError, OSError, RuntimeError) as e:  # PlyError, a missing file, a failing Blender importer
        text = str(e) or type(e).__name__
        raise AddonError(text if str(path) in text else f"{path}: {text}") from e


def _import_mesh(path: Path, name: str, collection: bpy.types.Collection, parent: bpy.types.Object | None,
                 gltf_z_up: bool) -> bpy.types.Object:
    if not path.is_file():
        raise AddonError(f"{path}: mesh file not found")
    fmt = mesh_format(path)
    if fmt == "ply":
        ply = read_ply(path)
        remove_named_object(name)
        me = mesh_from_ply(ply, name)
        obj = bpy.data.objects.new(name, me)
        collection.objects.link(obj)
        if ply.colors is not None:
            me.materials.append(vertex_color_material())
    else:
        new = _import_with_operator(path, fmt, gltf_z_up)
        meshes = [o for o in new if o.type == "MESH"]
        if not meshes:
            for o in new:
                bpy.data.objects.remove(o, do_unlink=True)
            raise AddonError(f"{path}: the file holds no mesh")
        remove_named_object(name)
        obj = meshes[0]
        obj.name = name
        for o in new:  # the importers link to the active collection; move everything to ours
            for c in list(o.users_collection):
                c.objects.unlink(o)
            collection.objects.link(o)
            if o is not obj and o.parent is None:
                o.parent = obj
    if obj.matrix_basis != Matrix.Identity(4):
        # Importers may express their axis conversion as the object's transform: bake it into the mesh so
        # the object itself sits exactly in the cameras' frame.
        obj.data.transform(obj.matrix_basis)
        obj.matrix_basis = Matrix.Identity(4)
    if parent is not None:
        obj.parent = parent
        obj.matrix_parent_inverse = Matrix.Identity(4)
    obj[RESULT_PROP] = str(path)
    stamp(obj)
    return obj
