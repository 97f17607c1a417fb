"""Photos or a video that still need their cameras solved (``engine solve``); bpy-free.

Blender never imports pycolmap: the add-on only decides whether a source needs solving, where the solved dataset
goes, and builds the ``python -m engine solve`` command that the engine process runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .camera_source import datasets_module
from .errors import AddonError

# The engine's own rule (datasets/photo_sources.py, vendored in the add-on zip): one copy of the suffixes and of
# ``needs_solving``.
_photo_sources = datasets_module("photo_sources")
PHOTO_SUFFIXES: tuple[str, ...] = _photo_sources.PHOTO_SUFFIXES
VIDEO_SUFFIXES: tuple[str, ...] = _photo_sources.VIDEO_SUFFIXES
needs_solving = _photo_sources.needs_solving
# (name, label, description) of ``engine solve --matcher`` (engine/solve/sfm.py choose_matcher): the one list the
# operator's menu and the command check use.
MATCHER_ITEMS = (
    ("auto", "Auto", "Sequential for a video; for photos every pair while the pairs fit a budget linear in the "
     "count, retrieval beyond"),
    ("exhaustive", "Exhaustive", "Match every pair of photos"),
    ("sequential", "Sequential", "Match neighbouring photos in name order (video frames)"),
    ("retrieval", "Retrieval", "Match each photo with its most similar ones (visual words): large photo sets"),
)
MATCHERS = tuple(name for name, _label, _description in MATCHER_ITEMS)
SOLVE_FILE = "solve.json"
SOLVE_LOG = "engine_solve_stderr.log"


def solved_dir_for(source: str | Path, base: str | Path) -> Path:
    """Where the solved dataset of ``source`` goes: ``<base>/<source name> solved``."""
    source = Path(source)
    name = source.stem if source.is_file() else source.name
    return Path(base) / f"{name or 'photos'} solved"


def build_solve_command(python: Path | str, source: Path | str, out: Path | str, matcher: str = "auto",
                        extra: Sequence[str] = ()) -> list[str]:
    """``python -m engine solve SOURCE --out DATA_DIR --matcher M --progress jsonl`` (AddonError: unknown
    matcher)."""
    if matcher not in MATCHERS:
        raise AddonError(f"unknown matcher '{matcher}' (expected one of {', '.join(MATCHERS)})")
    return [str(python), "-m", "engine", "solve", str(Path(source).absolute()), "--out", str(Path(out).absolute()),
            "--matcher", matcher, "--progress", "jsonl", *extra]


def warnings_of(events: Sequence[dict]) -> list[str]:
    """The solve's ``warning`` messages (photos left out), for the panel and the operator report."""
    return [str(e.get("message", "")) for e in events if e.get("event") == "warning"]
