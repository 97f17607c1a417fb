"""The persistent torch.compile cache (engine/compile_cache.py): a second process loads what the first compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from engine_helpers import REPO

from engine.compile_cache import cache_key, engine_version, user_cache_dir

# Compiles a small function with inductor (a real C++ build on the CPU) through the engine's cache settings.
_COMPILE = """
import json, torch
from torch._dynamo.utils import counters
from engine.compile_cache import enable_compile_cache
folder = enable_compile_cache(torch.device("cpu"))
f = torch.compile(lambda x: torch.sin(x * 2.0 + 1.0).sum(), fullgraph=True)
f(torch.randn(64))
print(json.dumps({"folder": str(folder), "hit": counters["inductor"]["fxgraph_cache_hit"],
                  "miss": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def test_user_cache_folder_follows_the_platform_convention(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    expected = {"win32": tmp_path / "local", "darwin": os.path.expanduser("~/Library/Caches")}.get(sys.platform,
                                                                                                   tmp_path)
    assert user_cache_dir() == expected / "neus-for-blender"
    key = cache_key(torch.device("cpu"))
    assert key == f"engine{engine_version()}-torch{torch.__version__}-cpu".replace("/", "_")
    assert engine_version() != "dev"  # read from pyproject.toml in a checkout


# Two inductor builds in fresh processes: 48 s cold + 10.5 s warm on the shared 2-core CPU (2026-12-02), too long for
# the suite; engine/gpu/gpu_check.sh runs it (NEUS_SLOW_TESTS=1), as can anyone.
@pytest.mark.skipif(not os.environ.get("NEUS_SLOW_TESTS"), reason="~60 s of C++ builds on 2 cores: NEUS_SLOW_TESTS=1")
def test_second_process_loads_the_compiled_code_from_the_user_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env.update(XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=str(REPO))

    def run() -> dict:
        out = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=300,
                             cwd=REPO)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    folder = tmp_path / "neus-for-blender" / "torch-compile" / cache_key(torch.device("cpu"))
    assert first["folder"] == second["folder"] == str(folder)
    assert (first["miss"], first["hit"]) == (1, 0)
    assert (second["miss"], second["hit"]) == (0, 1)
    assert any(folder.rglob("*.py"))  # inductor's generated code lives there
