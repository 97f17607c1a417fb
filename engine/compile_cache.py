"""A persistent torch.compile cache in the user's cache folder, so that a user's second run does not compile again.

torch keeps compiled code (inductor's FX graph cache and AOT autograd cache, Triton's kernels) under
``TORCHINDUCTOR_CACHE_DIR``, by default in the temporary folder, which the system clears. The engine points it at
``<user cache>/neus-for-blender/torch-compile/<key>``:

- user cache: ``$XDG_CACHE_HOME`` or ``~/.cache`` (Linux), ``~/Library/Caches`` (macOS), ``%LOCALAPPDATA%``
  (Windows), the places a user's tools keep caches on each system;
- key: the engine version, the torch version and the device (GPU name, compute capability, CUDA version), so that a
  torch or driver update, another GPU or another engine release starts a folder of its own and an old one can be
  deleted whole. Inside, torch's own cache keys cover the traced graph, the compiler settings and the code version.

A ``TORCHINDUCTOR_CACHE_DIR`` set to another folder than torch's default (by the GPU check script, or a user) is
left alone.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

import torch

APP = "neus-for-blender"


def user_cache_dir() -> Path:
    """This application's folder in the user's cache folder for this system."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / APP


def engine_version() -> str:
    try:
        return importlib.metadata.version(APP)
    except importlib.metadata.PackageNotFoundError:  # a source checkout or the add-on's bundled engine
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        text = pyproject.read_text() if pyproject.is_file() else ""
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return found.group(1) if found else "dev"


def cache_key(device: torch.device) -> str:
    """A folder name for (engine version, torch version, device), filesystem-safe."""
    if device.type == "cuda":
        index = device.index or 0
        major, minor = torch.cuda.get_device_capability(index)
        where = f"{torch.cuda.get_device_name(index)}-sm{major}{minor}-cuda{torch.version.cuda}"
    else:
        where = device.type
    raw = f"engine{engine_version()}-torch{torch.__version__}-{where}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", raw)


def enable_compile_cache(device: torch.device) -> Path:
    """Points torch.compile's caches at the user's cache folder (unless TORCHINDUCTOR_CACHE_DIR is set) and turns on
    the FX graph and AOT autograd caches. Call before the first compilation. Returns the cache folder used."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not chosen or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):  # torch sets its default
        folder = user_cache_dir() / "torch-compile" / cache_key(device)
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    torch._inductor.config.fx_graph_cache = True
    if hasattr(torch._functorch.config, "enable_autograd_cache"):
        torch._functorch.config.enable_autograd_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
