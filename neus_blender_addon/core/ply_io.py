"""A numpy-only PLY reader (ASCII, binary little and big endian). No bpy.

Blender's own PLY importer changed with every few releases (Python add-on, then C++ ``wm.ply_import`` with its
own colour handling), so the add-on reads PLY itself and builds the mesh with ``foreach_set``.
Supports vertex positions, optional normals and colours (uchar/ushort or float, RGB or RGBA), polygon faces
stored as a list property (``vertex_indices`` / ``vertex_index``), and skips any other element or property.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_COLOR_NAMES = (("red", "green", "blue", "alpha"), ("r", "g", "b", "a"),
                ("diffuse_red", "diffuse_green", "diffuse_blue", "diffuse_alpha"))
_FACE_LIST_NAMES = ("vertex_indices", "vertex_index")


class PlyError(ValueError):
    """A PLY file that cannot be read; the message names the file and the problem."""


@dataclass
class PlyProperty:
    name: str
    dtype: str  # numpy type code without byte order, e.g. "f4"
    count_dtype: str | None = None  # set for list properties


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[PlyProperty]


@dataclass
class PlyMesh:
    """A polygon mesh read from PLY.

    Attributes:
        vertices: (N, 3) float32 positions.
        face_indices: (L,) int32 vertex indices of all face corners, face after face.
        face_sizes: (F,) int32 corner count of each face (sum = L).
        colors: (N, 4) float32 RGBA in [0, 1] as stored (PLY colours are sRGB-encoded), or None.
        normals: (N, 3) float32 or None.
    """

    vertices: np.ndarray
    face_indices: np.ndarray
    face_sizes: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None

    @property
    def loop_starts(self) -> np.ndarray:
        """(F,) int32 index of each face's first corner in ``face_indices``."""
        starts = np.zeros(len(self.face_sizes), dtype=np.int32)
        if len(self.face_sizes) > 1:
            np.cumsum(self.face_sizes[:-1], out=starts[1:])
        return starts

    @property
    def triangles(self) -> np.ndarray:
        """(F, 3) int32 faces; raises ValueError if the mesh has non-triangle faces."""
        if not np.all(self.face_sizes == 3):
            raise ValueError("mesh has non-triangle faces")
        return self.face_indices.reshape(-1, 3)


def _parse_header(path: Path, data: bytes) -> tuple[str, list[PlyElement], int]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise PlyError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    body = data.find(b"\n", end)
    if body < 0:
        raise PlyError(f"{path}: header not terminated by a newline")
    fmt = None
    elements: list[PlyElement] = []
    for raw in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
                if fmt not in _FORMATS:
                    raise PlyError(f"{path}: unknown PLY format '{fmt}'")
            elif words[0] == "element":
                elements.append(PlyElement(words[1], int(words[2]), []))
            elif words[0] == "property":
                if not elements:
                    raise PlyError(f"{path}: property before any element: '{raw.strip()}'")
                if words[1] == "list":
                    elements[-1].properties.append(PlyProperty(words[4], _TYPES[words[3]], _TYPES[words[2]]))
                else:
                    elements[-1].properties.append(PlyProperty(words[2], _TYPES[words[1]]))
            else:
                raise PlyError(f"{path}: unexpected header line '{raw.strip()}'")
        except (IndexError, KeyError, ValueError) as e:
            if isinstance(e, PlyError):
                raise
            raise PlyError(f"{path}: bad header line '{raw.strip()}'") from e
    if fmt is None:
        raise PlyError(f"{path}: header has no 'format' line")
    return fmt, elements, body + 1


def _columns(el: PlyElement, out: dict[str, list]) -> dict[str, np.ndarray | list]:
    """Record-by-record values -> columns: scalar properties as (count,) arrays, list properties kept as lists."""
    return {k: (v if any(q.name == k and q.count_dtype for q in el.properties) else np.array(v))
            for k, v in out.items()}


def _read_binary(path: Path, el: PlyElement, data: bytes, offset: int, bo: str) -> tuple[dict[str, np.ndarray], int]:
    """Reads one element; returns {property: (count,) array or list-array} and the new offset."""
    lists = [p for p in el.properties if p.count_dtype]
    if not lists:
        dt = np.dtype([(p.name, bo + p.dtype) for p in el.properties])
        need = dt.itemsize * el.count
        if offset + need > len(data):
            raise PlyError(f"{path}: file ends inside element '{el.name}' ({len(data) - offset} of {need} bytes)")
        arr = np.frombuffer(data, dtype=dt, count=el.count, offset=offset)
        return {p.name: arr[p.name] for p in el.properties}, offset + need
    if el.count == 0:
        return {p.name: np.zeros((0, 0)) for p in el.properties}, offset
    # Fast path: every list has the length found in the first record (all-triangle meshes, say).
    fields = []
    probe = offset
    for p in el.properties:
        if p.count_dtype:
            if probe + np.dtype(p.count_dtype).itemsize > len(data):
                raise PlyError(f"{path}: file ends inside element '{el.name}'")
            n = int(np.frombuffer(data, bo + p.count_dtype, 1, probe)[0])
            fields.append((p.name + "#n", bo + p.count_dtype))
            fields.append((p.name, bo + p.dtype, (n,)))
            probe += np.dtype(p.count_dtype).itemsize + n * np.dtype(p.dtype).itemsize
        else:
            fields.append((p.name, bo + p.dtype))
            probe += np.dtype(p.dtype).itemsize
    dt = np.dtype(fields)
    need = dt.itemsize * el.count
    if offset + need <= len(data):
        arr = np.frombuffer(data, dtype=dt, count=el.count, offset=offset)
        uniform = all(np.all(arr[p.name + "#n"] == dt[p.name].shape[0]) for p in lists)
        if uniform:
            return {p.name: arr[p.name] for p in el.properties}, offset + need
    # Slow path: mixed polygon sizes; walk record by record.
    out: dict[str, list] = {p.name: [] for p in el.properties}
    for _ in range(el.count):
        for p in el.properties:
            try:
                if p.count_dtype:
                    n = int(np.frombuffer(data, bo + p.count_dtype, 1, offset)[0])
                    offset += np.dtype(p.count_dtype).itemsize
                    out[p.name].append(np.frombuffer(data, bo + p.dtype, n, offset))
                    offset += n * np.dtype(p.dtype).itemsize
                else:
                    out[p.name].append(np.frombuffer(data, bo + p.dtype, 1, offset)[0])
                    offset += np.dtype(p.dtype).itemsize
            except ValueError as e:
                raise PlyError(f"{path}: file ends inside element '{el.name}'") from e
    return _columns(el, out), offset


def _read_ascii(path: Path, el: PlyElement, tokens: list[bytes], pos: int) -> tuple[dict[str, np.ndarray], int]:
    lists = [p for p in el.properties if p.count_dtype]
    k = len(el.properties)
    if not lists:
        chunk = tokens[pos:pos + el.count * k]
        if len(chunk) < el.count * k:
            raise PlyError(f"{path}: file ends inside element '{el.name}' "
                           f"({len(chunk)} of {el.count * k} values)")
        try:
            table = np.array(chunk).astype(np.float64).reshape(el.count, k)
        except ValueError as e:
            raise PlyError(f"{path}: non-numeric value in element '{el.name}'") from e
        return {p.name: table[:, i].astype(p.dtype) for i, p in enumerate(el.properties)}, pos + el.count * k
    out: dict[str, list] = {p.name: [] for p in el.properties}
    try:
        for _ in range(el.count):
            for p in el.properties:
                if p.count_dtype:
                    n = int(tokens[pos])
                    out[p.name].append(np.array(tokens[pos + 1:pos + 1 + n]).astype(np.float64).astype(p.dtype))
                    if len(out[p.name][-1]) != n:
                        raise IndexError
                    pos += 1 + n
                else:
                    out[p.name].append(float(tokens[pos]))
                    pos += 1
    except IndexError as e:
        raise PlyError(f"{path}: file ends inside element '{el.name}'") from e
    except ValueError as e:
        raise PlyError(f"{path}: non-numeric value in element '{el.name}'") from e
    return _columns(el, out), pos


def _to_unit(values: np.ndarray) -> np.ndarray:
    """Colour channel -> float in [0, 1] (integers are scaled by their type's maximum)."""
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32) / np.float32(np.iinfo(values.dtype).max)
    return np.clip(values.astype(np.float32), 0.0, 1.0)


def _faces_from(path: Path, lists: object, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(lists, np.ndarray) and lists.ndim == 2:  # uniform fast path: (F, k)
        sizes = np.full(lists.shape[0], lists.shape[1], dtype=np.int32)
        flat = lists.reshape(-1)
    else:
        seq = list(lists)  # type: ignore[call-overload]
        sizes = np.array([len(f) for f in seq], dtype=np.int32)
        flat = np.concatenate(seq) if seq else np.zeros(0)
    flat = flat.astype(np.int64)
    if np.any(sizes < 3):
        raise PlyError(f"{path}: a face has fewer than 3 corners")
    if flat.size and (flat.min() < 0 or flat.max() >= n_vertices):
        raise PlyError(f"{path}: face index out of range (0..{n_vertices - 1}): "
                       f"{int(flat.min())}..{int(flat.max())}")
    return flat.astype(np.int32), sizes


def read_ply(path: str | Path) -> PlyMesh:
    """Reads a PLY mesh (or point cloud: no faces).

    Raises:
        PlyError: unreadable, truncated or inconsistent file (the message names the file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PlyError(f"{path}: cannot read ({e.strerror or e})") from e
    fmt, elements, offset = _parse_header(path, data)
    bo = _FORMATS[fmt]
    parsed: dict[str, dict[str, np.ndarray]] = {}
    tokens = data[offset:].split() if bo is None else []
    pos = 0
    for el in elements:
        if bo is None:
            values, pos = _read_ascii(path, el, tokens, pos)
        else:
            values, offset = _read_binary(path, el, data, offset, bo)
        parsed.setdefault(el.name, values)
    vert = parsed.get("vertex")
    if vert is None or not all(k in vert for k in "xyz"):
        raise PlyError(f"{path}: no 'vertex' element with x, y, z properties")
    vertices = np.stack([vert[k] for k in "xyz"], axis=1).astype(np.float32)
    if not np.all(np.isfinite(vertices)):
        raise PlyError(f"{path}: vertex positions contain NaN or infinity")
    colors = None
    for names in _COLOR_NAMES:
        if all(n in vert for n in names[:3]):
            rgb = [_to_unit(vert[n]) for n in names[:3]]
            alpha = _to_unit(vert[names[3]]) if names[3] in vert else np.ones(len(vertices), np.float32)
            colors = np.stack(rgb + [alpha], axis=1)
            break
    normals = None
    if all(k in vert for k in ("nx", "ny", "nz")):
        normals = np.stack([vert[k] for k in ("nx", "ny", "nz")], axis=1).astype(np.float32)
    face_indices = np.zeros(0, np.int32)
    face_sizes = np.zeros(0, np.int32)
    face = parsed.get("face")
    if face is not None:
        face_el = next(e for e in elements if e.name == "face")
        list_props = [p.name for p in face_el.properties if p.count_dtype]
        name = next((n for n in _FACE_LIST_NAMES if n in list_props), list_props[0] if list_props else None)
        if name is None:
            raise PlyError(f"{path}: 'face' element has no vertex index list")
        if face_el.count:
            face_indices, face_sizes = _faces_from(path, face[name], len(vertices))
    return PlyMesh(vertices, face_indices, face_sizes, colors, normals)
