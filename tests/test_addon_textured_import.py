"""The add-on brings a textured, game-ready result (OBJ + MTL + colour and normal-map PNGs, or GLB) into real
Blender with its image texture in the material, and the normal map read as data, not colour."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from addon_helpers import IN_BLENDER

from engine.mesh import write_glb, write_obj
from engine.mesh.normal_map import bake_normal_map, nearest_normals
from engine.mesh.texture import bake_texture, unwrap_uv

pytestmark = IN_BLENDER


@pytest.fixture(scope="module")
def game_ready_files(tmp_path_factory):
    """A low-poly sphere textured with a colour of position and a normal map baked from a fine sphere."""
    folder = tmp_path_factory.mktemp("textured")
    low, high = trimesh.creation.icosphere(subdivisions=2), trimesh.creation.icosphere(subdivisions=5)
    vmap, faces, uvs = unwrap_uv(np.asarray(low.vertices), np.asarray(low.faces), texture_size=64)
    verts = np.asarray(low.vertices, np.float32)[vmap]
    tex = bake_texture(verts, faces, uvs, lambda p, n: p * 0.5 + 0.5, size=64)
    nmap = bake_normal_map(verts, faces, uvs, nearest_normals(high.vertices, high.vertex_normals), size=64,
                           normals=np.asarray(low.vertex_normals, np.float32)[vmap])
    obj = write_obj(folder / "mesh_textured.obj", verts, faces, uvs=uvs, texture=tex, yup=True, normal_map=nmap)
    glb = write_glb(folder / "mesh_textured.glb", verts, faces, uvs=uvs, texture=tex, yup=True, normal_map=nmap)
    return obj["obj"], glb, len(faces)


@pytest.mark.parametrize("kind", ["obj", "glb"])
def test_textured_result_imports_with_its_textures(bpy, game_ready_files, kind):
    from neus_blender_addon.blender_mesh import import_mesh

    obj_path, glb_path, n_faces = game_ready_files
    coll = bpy.data.collections.new("results")
    bpy.context.scene.collection.children.link(coll)
    obj = import_mesh(obj_path if kind == "obj" else glb_path, "asset", coll)
    assert len(obj.data.polygons) == n_faces and len(obj.data.uv_layers) == 1
    tree = obj.active_material.node_tree
    bsdf = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    base = bsdf.inputs["Base Color"].links[0].from_node
    assert base.bl_idname == "ShaderNodeTexImage" and base.image.size[0] == 64
    assert base.image.colorspace_settings.name == "sRGB"
    normal = bsdf.inputs["Normal"].links[0].from_node
    assert normal.bl_idname == "ShaderNodeNormalMap"
    assert normal.inputs["Color"].links[0].from_node.image.colorspace_settings.name == "Non-Color"
