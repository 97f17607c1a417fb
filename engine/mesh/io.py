"""Mesh files: atomic writers (PLY, OBJ+MTL+PNG, GLB), a reader, and frame helpers.

Every writer goes through :func:`atomic_write` / :func:`atomic_path`: the bytes land in a temporary file in
the destination folder and are renamed into place, so a reader (the Blender add-on polling for preview meshes)
never sees half a file, and a failure leaves the previous file untouched and no temporary behind.

Coordinates are written as given (the normalized frame unless the caller transformed them with
:func:`transform_vertices`). glTF and Blender's OBJ importer assume +Y up and rotate into Blender's +Z up on
import; ``yup=True`` on the OBJ/GLB writers stores ``(x, z, -y)`` so that such an importer recovers
``(x, y, z)``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

# Temporary files start with this prefix (the repository's .gitignore ignores it).
TMP_PREFIX = ".neus_tmp"


class MeshFileError(ValueError):
    """A mesh file is missing, unreadable, malformed or empty. The message names the file."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class MeshData:
    """A mesh as read from disk (arrays in the file's own frame).

    Attributes:
        vertices: (V, 3) float32.
        faces: (F, 3) int64; (0, 3) for a point cloud.
        colors: (V, 3) uint8 per-vertex RGB, or None.
        uvs: (V, 2) float32 texture coordinates (OBJ convention: v = 0 at the image bottom), or None.
        texture: (H, W, 3) uint8 diffuse texture, or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------


# mkstemp creates 0600 files; give the final file the mode a plain open() would (read once: os.umask sets it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _replace(src: Path, dst: Path, tries: int = 20) -> None:
    """os.replace, retried briefly: on Windows it fails while another process (Blender) has ``dst`` open."""
    for attempt in range(tries):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if os.name != "nt" or attempt == tries - 1:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = True) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; renames it onto ``path`` if the block succeeds.

    For libraries that write by file name. The temporary is a hidden file named ``.neus_tmp.<name>.<random>``
    ending in ``path``'s suffix (``keep_suffix``, for writers that pick the format from the extension) or in
    ``.tmp``. On an exception the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    suffix = path.suffix if keep_suffix else ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}.{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with contextlib.suppress(OSError):
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        _replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Opens a temporary file next to ``path`` for writing; renames it onto ``path`` if the block succeeds.

    Args:
        path: destination file (its folder must exist).
        mode: ``"wb"`` (binary) or ``"w"`` (text).
        encoding: text encoding (defaults to UTF-8 in text mode).
    Yields:
        the open file object. The data are flushed and fsync'ed before the rename, so a crash never leaves a
        truncated file under the final name. On an exception nothing is renamed and the temporary is deleted.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    # A ".tmp" ending: a folder watcher globbing "*.ply" never picks up a file still being written.
    with atomic_path(path, keep_suffix=False) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------------
# Array checks
# ----------------------------------------------------------------------------------------------------


def _as_vertices(vertices: Any) -> np.ndarray:
    v = np.asarray(vertices, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {v.shape}")
    return np.ascontiguousarray(v)


def _as_faces(faces: Any, n_vertices: int) -> np.ndarray:
    if faces is None:
        return np.zeros((0, 3), dtype=np.int64)
    f = np.asarray(faces, dtype=np.int64)
    if f.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {f.shape}")
    if f.min() < 0 or f.max() >= n_vertices:
        raise ValueError(f"face indices must lie in [0, {n_vertices}), got [{f.min()}, {f.max()}]")
    return f


def colors_to_uint8(colors: Any) -> np.ndarray:
    """(V, 3) colours as uint8: floats are read as [0, 1] and rounded, uint8 passes through."""
    c = np.asarray(colors)
    if c.ndim != 2 or c.shape[1] not in (3, 4):
        raise ValueError(f"colors must have shape (V, 3), got {c.shape}")
    c = c[:, :3]
    if c.dtype == np.uint8:
        return np.ascontiguousarray(c)
    if np.issubdtype(c.dtype, np.integer):
        return np.clip(c, 0, 255).astype(np.uint8)
    return np.round(np.clip(np.nan_to_num(c.astype(np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_texture(texture: Any) -> np.ndarray:
    t = np.asarray(texture)
    if t.ndim != 3 or t.shape[2] not in (3, 4):
        raise ValueError(f"texture must have shape (H, W, 3), got {t.shape}")
    if t.dtype != np.uint8:
        t = np.round(np.clip(t.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(t[..., :3])


def _zup_to_yup(v: np.ndarray) -> np.ndarray:
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def _yup_to_zup(v: np.ndarray) -> np.ndarray:
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)


# ----------------------------------------------------------------------------------------------------
# PLY
# ----------------------------------------------------------------------------------------------------


def ply_bytes(vertices: Any, faces: Any = None, colors: Any = None) -> bytes:
    """Binary little-endian PLY: float x, y, z, optional uchar red, green, blue; uchar-counted int faces.

    Args:
        vertices: (V, 3) positions.
        faces: (F, 3) vertex indices, or None for a point cloud (no face element is written then).
        colors: (V, 3) uint8 (or float in [0, 1]) per-vertex RGB, or None.
    """
    v = _as_vertices(vertices)
    f = _as_faces(faces, len(v))
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment written by neus-for-blender",
        f"element vertex {len(v)}",
        "property float x",
        "property float y",
        "property float z",
    ]
    if colors is not None:
        c = colors_to_uint8(colors)
        if len(c) != len(v):
            raise ValueError(f"colors has {len(c)} rows for {len(v)} vertices")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    if faces is not None:
        header += [f"element face {len(f)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    vert = np.empty(len(v), dtype=fields)
    vert["x"], vert["y"], vert["z"] = v[:, 0], v[:, 1], v[:, 2]
    if colors is not None:
        vert["red"], vert["green"], vert["blue"] = c[:, 0], c[:, 1], c[:, 2]
    parts = [("\n".join(header) + "\n").encode("ascii"), vert.tobytes()]
    if faces is not None:
        face = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        face["n"] = 3
        face["i"] = f
        parts.append(face.tobytes())
    return b"".join(parts)


def write_ply(path: str | os.PathLike, vertices: Any, faces: Any = None, colors: Any = None) -> Path:
    """Writes a binary little-endian PLY atomically (see :func:`ply_bytes`). Returns the path."""
    data = ply_bytes(vertices, faces, colors)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


def _read_ply(path: Path) -> MeshData:
    """Reads vertex positions, RGB and faces from ASCII or binary PLY (polygons are fan-triangulated)."""
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise MeshFileError(path, "not a PLY file (missing 'ply' magic or 'end_header')")
    nl = data.find(b"\n", end)
    body = memoryview(data)[nl + 1 :]
    header = data[:end].decode("ascii", errors="replace").splitlines()
    fmt = None
    elements: list[dict[str, Any]] = []
    for line in header:
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append({"name": tok[1], "count": int(tok[2]), "props": []})
        elif tok[0] == "property":
            if not elements:
                raise MeshFileError(path, "PLY property before any element")
            if tok[1] == "list":
                elements[-1]["props"].append((tok[4], "list", _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]]))
            else:
                elements[-1]["props"].append((tok[2], "scalar", _PLY_TYPES[tok[1]], None))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise MeshFileError(path, f"unsupported PLY format {fmt!r}")
    endian = ">" if fmt == "binary_big_endian" else "<"
    out: dict[str, dict[str, np.ndarray]] = {}
    if fmt == "ascii":
        tokens = body.tobytes().split()
        pos = 0
        for el in elements:
            cols: dict[str, list] = {p[0]: [] for p in el["props"]}
            scalar_only = all(p[1] == "scalar" for p in el["props"])
            if scalar_only:
                n = len(el["props"])
                arr = np.array(tokens[pos : pos + n * el["count"]], dtype=np.float64).reshape(el["count"], n)
                pos += n * el["count"]
                out[el["name"]] = {p[0]: arr[:, i] for i, p in enumerate(el["props"])}
                continue
            for _ in range(el["count"]):
                for name, kind, _t, _u in el["props"]:
                    if kind == "scalar":
                        cols[name].append(float(tokens[pos]))
                        pos += 1
                    else:
                        k = int(tokens[pos])
                        cols[name].append([int(t) for t in tokens[pos + 1 : pos + 1 + k]])
                        pos += 1 + k
            out[el["name"]] = cols
    else:
        offset = 0
        for el in elements:
            props = el["props"]
            if all(p[1] == "scalar" for p in props):
                dt = np.dtype([(p[0], endian + p[2]) for p in props])
                nbytes = dt.itemsize * el["count"]
                if offset + nbytes > len(body):
                    raise MeshFileError(path, f"PLY truncated in element '{el['name']}'")
                arr = np.frombuffer(body, dtype=dt, count=el["count"], offset=offset)
                offset += nbytes
                out[el["name"]] = {p[0]: arr[p[0]] for p in props}
                continue
            # A single list property holding triangles (the common case) is read in one vectorized pass.
            if len(props) == 1 and el["count"] > 0:
                name, _, ct, it = props[0]
                cdt, idt = np.dtype(endian + ct), np.dtype(endian + it)
                first = np.frombuffer(body, dtype=cdt, count=1, offset=offset)
                if len(first) and int(first[0]) == 3:
                    dt = np.dtype([("n", cdt), ("i", idt, (3,))])
                    nbytes = dt.itemsize * el["count"]
                    if offset + nbytes <= len(body):
                        arr = np.frombuffer(body, dtype=dt, count=el["count"], offset=offset)
                        if np.all(arr["n"] == 3):
                            out[el["name"]] = {name: arr["i"].astype(np.int64)}
                            offset += nbytes
                            continue
            cols = {p[0]: [] for p in props}
            for _ in range(el["count"]):
                for name, kind, t, u in props:
                    if kind == "scalar":
                        d = np.dtype(endian + t)
                        if offset + d.itemsize > len(body):
                            raise MeshFileError(path, f"PLY truncated in element '{el['name']}'")
                        cols[name].append(np.frombuffer(body, dtype=d, count=1, offset=offset)[0])
                        offset += d.itemsize
                    else:
                        cd, idd = np.dtype(endian + t), np.dtype(endian + u)
                        if offset + cd.itemsize > len(body):
                            raise MeshFileError(path, f"PLY truncated in element '{el['name']}'")
                        k = int(np.frombuffer(body, dtype=cd, count=1, offset=offset)[0])
                        offset += cd.itemsize
                        if offset + k * idd.itemsize > len(body):
                            raise MeshFileError(path, f"PLY truncated in element '{el['name']}'")
                        cols[name].append(np.frombuffer(body, dtype=idd, count=k, offset=offset).tolist())
                        offset += k * idd.itemsize
            out[el["name"]] = cols
    vert = out.get("vertex")
    if vert is None or not all(k in vert for k in ("x", "y", "z")):
        raise MeshFileError(path, "PLY has no vertex element with x, y, z")
    vertices = np.stack([np.asarray(vert[k], dtype=np.float32) for k in ("x", "y", "z")], axis=1)
    colors = None
    for names in (
        ("red", "green", "blue"),
        ("r", "g", "b"),
        ("diffuse_red", "diffuse_green", "diffuse_blue"),
    ):
        if all(k in vert for k in names):
            c = np.stack([np.asarray(vert[k]) for k in names], axis=1)
            colors = colors_to_uint8(c if np.issubdtype(c.dtype, np.integer) else c.astype(np.float64))
            break
    faces = np.zeros((0, 3), dtype=np.int64)
    face = out.get("face")
    if face:
        key = (
            "vertex_indices"
            if "vertex_indices" in face
            else ("vertex_index" if "vertex_index" in face else None)
        )
        if key is None:
            raise MeshFileError(path, "PLY face element has no vertex_indices list")
        faces = _triangulate(face[key])
        if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise MeshFileError(path, "PLY face indices out of range")
    return MeshData(vertices=vertices, faces=faces, colors=colors)


def _triangulate(polys: Any) -> np.ndarray:
    """(F, 3) int64 triangles from an (F, 3) array or a list of polygons (fan triangulation)."""
    if isinstance(polys, np.ndarray) and polys.ndim == 2 and polys.shape[1] == 3:
        return polys.astype(np.int64)
    tris = [[p[0], p[i], p[i + 1]] for p in polys for i in range(1, len(p) - 1)]
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------------
# OBJ + MTL + PNG
# ----------------------------------------------------------------------------------------------------


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_obj(
    path: str | os.PathLike,
    vertices: Any,
    faces: Any,
    uvs: Any = None,
    texture_png: Any = None,
    colors: Any = None,
    yup: bool = False,
) -> dict[str, Path]:
    """Writes a Wavefront OBJ, with an MTL and a PNG next to it when textured; every file atomically.

    Args:
        path: the ``.obj`` path; ``<stem>.mtl`` and ``<stem>.png`` go in the same folder.
        vertices: (V, 3) positions.
        faces: (F, 3) vertex indices (shared by positions and UVs: one UV per vertex, as from xatlas).
        uvs: (V, 2) texture coordinates in [0, 1] (v = 0 at the image bottom), or None.
        texture_png: (H, W, 3) uint8 texture image (written as PNG), or None. Needs ``uvs``.
        colors: (V, 3) per-vertex RGB written as ``v x y z r g b`` (a common extension), or None.
        yup: store ``(x, z, -y)`` for importers that convert +Y up to +Z up (Blender's default).
    Returns:
        ``{"obj": ..., "mtl": ..., "png": ...}`` paths of the files written.
    """
    path = Path(path)
    v = _as_vertices(vertices)
    f = _as_faces(faces, len(v))
    if yup:
        v = _zup_to_yup(v)
    written: dict[str, Path] = {}
    lines = ["# written by neus-for-blender"]
    uv = None
    if texture_png is not None:
        if uvs is None:
            raise ValueError("write_obj: a texture needs uvs")
        tex = _as_texture(texture_png)
        png_path, mtl_path = path.with_suffix(".png"), path.with_suffix(".mtl")
        with atomic_write(png_path, "wb") as fh:
            fh.write(_png_bytes(tex))
        mtl = (
            "# written by neus-for-blender\nnewmtl material0\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\n"
            f"Ks 0.000 0.000 0.000\nillum 1\nmap_Kd {png_path.name}\n"
        )
        with atomic_write(mtl_path, "w") as fh:
            fh.write(mtl)
        written.update(png=png_path, mtl=mtl_path)
        lines += [f"mtllib {mtl_path.name}", "usemtl material0"]
    if uvs is not None:
        uv = np.asarray(uvs, dtype=np.float64)
        if uv.shape != (len(v), 2):
            raise ValueError(f"uvs must have shape ({len(v)}, 2), got {uv.shape}")
    buf = io.StringIO()
    buf.write("\n".join(lines) + "\n")
    if colors is not None:
        c = colors_to_uint8(colors).astype(np.float64) / 255.0
        if len(c) != len(v):
            raise ValueError(f"colors has {len(c)} rows for {len(v)} vertices")
        np.savetxt(buf, np.concatenate([v, c], axis=1), fmt="v %.7g %.7g %.7g %.6f %.6f %.6f")
    else:
        np.savetxt(buf, v, fmt="v %.7g %.7g %.7g")
    if uv is not None:
        np.savetxt(buf, uv, fmt="vt %.7f %.7f")
        fi = f + 1
        np.savetxt(buf, np.repeat(fi, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(buf, f + 1, fmt="f %d %d %d")
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())
    written["obj"] = path
    return written


# ----------------------------------------------------------------------------------------------------
# GLB
# ----------------------------------------------------------------------------------------------------


def write_glb(
    path: str | os.PathLike,
    vertices: Any,
    faces: Any,
    colors: Any = None,
    uvs: Any = None,
    texture: Any = None,
    yup: bool = False,
) -> Path:
    """Writes a binary glTF (GLB) atomically: vertex colours as COLOR_0, or a textured PBR material.

    Args:
        path: destination ``.glb``.
        vertices: (V, 3) positions; faces: (F, 3) indices.
        colors: (V, 3) uint8 or float [0, 1] per-vertex RGB, or None (ignored when textured).
        uvs: (V, 2) in [0, 1] (OBJ convention; flipped to glTF's top-left origin on export) and
        texture: (H, W, 3) uint8 base-colour image, given together.
        yup: store ``(x, z, -y)``: glTF is +Y up and Blender's importer rotates it into +Z up, so with
            ``yup=True`` a mesh in a +Z-up frame lands in Blender with its original coordinates.
    """
    import trimesh
    from PIL import Image

    v = _as_vertices(vertices)
    f = _as_faces(faces, len(v))
    if yup:
        v = _zup_to_yup(v)
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False)
    if (uvs is None) != (texture is None):
        raise ValueError("write_glb: uvs and texture go together")
    if texture is not None:
        uv = np.asarray(uvs, dtype=np.float64)
        if uv.shape != (len(v), 2):
            raise ValueError(f"uvs must have shape ({len(v)}, 2), got {uv.shape}")
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(_as_texture(texture)), metallicFactor=0.0, roughnessFactor=1.0
        )
        mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    elif colors is not None:
        c = colors_to_uint8(colors)
        if len(c) != len(v):
            raise ValueError(f"colors has {len(c)} rows for {len(v)} vertices")
        rgba = np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], axis=1)
        mesh.visual = trimesh.visual.ColorVisuals(mesh=mesh, vertex_colors=rgba)
    data = mesh.export(file_type="glb")
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def read_mesh(path: str | os.PathLike, yup: bool = False) -> MeshData:
    """Reads a PLY (own parser: ASCII or binary, mesh or point cloud), OBJ, GLB/glTF or other trimesh format.

    Args:
        path: the file.
        yup: the file stores ``(x, z, -y)`` (written with ``yup=True``); convert back.
    Returns:
        :class:`MeshData` (scenes with several meshes are concatenated).
    Raises:
        MeshFileError: missing, unreadable or malformed file, or a file with no vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise MeshFileError(path, "file not found")
    try:
        if path.suffix.lower() == ".ply":
            mesh = _read_ply(path)
        else:
            mesh = _read_with_trimesh(path)
    except MeshFileError:
        raise
    except Exception as e:  # any parser failure is a bad file, reported as one line
        raise MeshFileError(path, f"cannot read mesh ({type(e).__name__}: {e})") from e
    if len(mesh.vertices) == 0:
        raise MeshFileError(path, "contains no vertices")
    if not np.all(np.isfinite(mesh.vertices)):
        raise MeshFileError(path, "contains non-finite vertex coordinates")
    if yup:
        mesh.vertices = _yup_to_zup(mesh.vertices).astype(np.float32)
    return mesh


def _read_with_trimesh(path: Path) -> MeshData:
    import trimesh

    loaded = trimesh.load(str(path), process=False)
    geoms = list(loaded.dump()) if isinstance(loaded, trimesh.Scene) else [loaded]
    if not geoms:
        raise MeshFileError(path, "contains no geometry")
    parts: list[MeshData] = []
    for g in geoms:
        v = np.asarray(g.vertices, dtype=np.float32)
        faces = np.asarray(getattr(g, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
        colors = uvs = texture = None
        visual = getattr(g, "visual", None)
        if visual is not None and visual.kind == "texture":
            if visual.uv is not None and len(visual.uv) == len(v):
                uvs = np.asarray(visual.uv, dtype=np.float32)[:, :2]
            mat = visual.material
            img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
            if img is not None:
                texture = np.asarray(img.convert("RGB"), dtype=np.uint8)
        elif visual is not None and visual.kind == "vertex":
            colors = np.asarray(visual.vertex_colors, dtype=np.uint8)[:, :3]
        elif isinstance(g, trimesh.PointCloud) and g.colors is not None and len(g.colors) == len(v):
            colors = np.asarray(g.colors, dtype=np.uint8)[:, :3]
        parts.append(MeshData(v, faces, colors, uvs, texture))
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    return MeshData(
        vertices=np.concatenate([p.vertices for p in parts]),
        faces=np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=True)]),
        colors=np.concatenate([p.colors for p in parts])
        if all(p.colors is not None for p in parts)
        else None,
    )


# ----------------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------------


def _as_scale_mat(scale_mat: Any) -> np.ndarray:
    m = np.asarray(scale_mat, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"scale_mat must be 4x4, got {m.shape}")
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError("scale_mat must be finite and invertible")
    return m


def transform_vertices(vertices: Any, scale_mat: Any) -> np.ndarray:
    """Maps points with a 4x4 matrix (normalized -> world with ``scale_mat``): ``x' = M @ [x, 1]``.

    Args:
        vertices: (V, 3) points.
        scale_mat: (4, 4) matrix (affine; a projective last row is honoured by dividing by w).
    Returns:
        (V, 3) float64 transformed points (computed in float64 to keep world-frame precision).
    """
    m = _as_scale_mat(scale_mat)
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    out = v @ m[:3, :3].T + m[:3, 3]
    w = v @ m[3, :3] + m[3, 3]
    if not np.allclose(w, 1.0):
        out = out / w[:, None]
    return out


def transform_mesh(vertices: Any, faces: Any, scale_mat: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`transform_vertices` plus a winding flip when the matrix mirrors (det < 0): normals stay outward.

    Returns:
        (V, 3) float64 vertices and (F, 3) int64 faces.
    """
    m = _as_scale_mat(scale_mat)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if np.linalg.det(m[:3, :3]) < 0:
        f = f[:, [0, 2, 1]]
    return transform_vertices(vertices, m), f


def write_normalization_json(path: str | os.PathLike, scale_mat: Any, frame: str = "normalized",
                             region: dict | None = None) -> Path:
    """Writes ``{"scale_mat": 4x4 row-major list, "frame": frame[, "region": {...}]}`` atomically (see
    engine/PROTOCOL.md)."""
    m = _as_scale_mat(scale_mat)
    if frame not in ("normalized", "world"):
        raise ValueError(f"frame must be 'normalized' or 'world', got {frame!r}")
    content = {"scale_mat": m.tolist(), "frame": frame}
    if region is not None:
        content["region"] = region
    with atomic_write(path, "w") as fh:
        json.dump(content, fh, indent=2)
        fh.write("\n")
    return Path(path)


def read_normalization_json(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Reads what :func:`write_normalization_json` wrote. Returns ((4, 4) float64 scale_mat, frame)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        m = _as_scale_mat(data["scale_mat"])
        frame = str(data.get("frame", "normalized"))
    except FileNotFoundError as e:
        raise MeshFileError(path, "file not found") from e
    except (ValueError, KeyError, TypeError) as e:
        raise MeshFileError(path, f"not a valid normalization file ({e})") from e
    return m, frame


__all__ = [
    "TMP_PREFIX",
    "MeshData",
    "MeshFileError",
    "atomic_path",
    "atomic_write",
    "colors_to_uint8",
    "ply_bytes",
    "read_mesh",
    "read_normalization_json",
    "transform_mesh",
    "transform_vertices",
    "write_glb",
    "write_normalization_json",
    "write_obj",
    "write_ply",
]
