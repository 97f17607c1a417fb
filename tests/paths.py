"""Where the tests' real inputs live: the repository, the bundled sample scene and the shared DTU scan.

One definition for every test module and helper (the fixtures that use them are in ``conftest.py``; pytest advises
against importing ``conftest`` itself, hence this small module).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` from elsewhere may put only tests/ on sys.path
    sys.path.insert(0, str(REPO))

from datasets.sample_scene import SAMPLE_SCENE_DIR as SAMPLE  # noqa: E402  (needs REPO on sys.path)

# The real DTU scan 65 (read-only, shared between checkouts); tests that need it skip with this reason.
DTU = (REPO / ".." / "shared" / "data" / "dtu_scan65").resolve()
HAS_DTU = (DTU / "cameras_sphere.npz").is_file()
NO_DTU_REASON = f"real DTU scan 65 not found at {DTU}"
HAS_SAMPLE = (SAMPLE / "cameras_sphere.npz").is_file()
NO_SAMPLE_REASON = f"bundled sample scene missing ({SAMPLE}; datasets/sample_scene/render_sample.py makes it)"

needs_dtu = pytest.mark.skipif(not HAS_DTU, reason=NO_DTU_REASON)
needs_sample = pytest.mark.skipif(not HAS_SAMPLE, reason=NO_SAMPLE_REASON)


def dtu_or_skip() -> Path:
    """The DTU scan folder, or a skip (with the reason) when this machine does not have it."""
    if not HAS_DTU:
        pytest.skip(NO_DTU_REASON)
    return DTU
