"""``doctor``: what will run here (Python, torch, devices, accelerators). Prints a report; exit 1 when a required
library is missing."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from ..cancel import CancelToken
from ..protocol import Emitter

WATCHES_STOP = False


@dataclass
class DoctorRequest:
    json: bool = False


def request_from_args(args) -> DoctorRequest:
    return DoctorRequest(json=args.json)


@contextlib.contextmanager
def run_folder(req: DoctorRequest, emitter: Emitter) -> Iterator[None]:
    yield None


def run(req: DoctorRequest, run_dir: None, emitter: Emitter, cancel: CancelToken) -> dict:
    return doctor_report()


def report(req: DoctorRequest, info: dict) -> int:
    if req.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:14s} {v}")
    return 0 if info["ok"] else 1


def doctor_report() -> dict:
    """What will run here. Every probe is real: it imports or runs the thing it reports on."""
    import importlib.util

    import torch

    from ..device import mps_available

    info: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
                  "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "mps": mps_available(),
                  "devices": []}
    try:
        import psutil  # optional

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        try:
            import os

            info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        except (ValueError, OSError, AttributeError):
            info["memory_gb"] = None
    info["devices"].append({"name": "cpu", "type": "cpu"})
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"name": p.name, "type": f"cuda:{i}", "memory_gb": round(p.total_memory / 2**30, 1)})
    if info["mps"]:
        info["devices"].append({"name": "Apple MPS", "type": "mps"})
    info["tinycudann"] = importlib.util.find_spec("tinycudann") is not None
    info["nerfacc"] = importlib.util.find_spec("nerfacc") is not None
    info["torch_compile"] = _probe_compile()
    info["pycolmap"] = _module_version("pycolmap")  # camera solving (`solve`); None when missing
    info["imageio_ffmpeg"] = _module_version("imageio_ffmpeg")
    for mod in ("lightning", "omegaconf", "mcubes", "trimesh", "xatlas", "PIL"):
        info[mod] = importlib.util.find_spec(mod) is not None
    info["ok"] = all(info[m] for m in ("lightning", "omegaconf", "mcubes", "trimesh", "PIL"))
    info["default_device"] = "cuda" if info["cuda"] else ("mps" if info["mps"] else "cpu")
    return info


def _module_version(name: str) -> str | None:
    """The version of an importable module, None when it is missing or fails to import."""
    import importlib

    try:
        return str(getattr(importlib.import_module(name), "__version__", "unknown"))
    except Exception:  # a broken binary wheel fails in many ways; doctor reports it as missing
        return None


def _probe_compile() -> bool | str:
    """torch.compile works on CUDA in practice; on CPU it needs a C++ compiler, so we only check it is present."""
    import shutil

    import torch

    if not hasattr(torch, "compile"):
        return False
    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401

            return True
        except ImportError:
            return "no triton"
    return "cpu (needs a C++ compiler)" if shutil.which("c++") or shutil.which("g++") else False
