"""A run folder (``fit --out RUN_DIR``): where its files are and how they are read and written (PROTOCOL.md, "Files").

Every job that opens a run folder (fit, export, render, fidelity) goes through :class:`RunDir`: the saved config is
read through the schema, checkpoints are read with one clear error per kind of damage, and the training scene is
loaded as the config describes it. Nothing here imports the training code, so exporting never imports ``train``;
and nothing heavier than the standard library at import time, so every command starts quickly (``solve``,
``doctor``).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .liveness import tick

if TYPE_CHECKING:
    import numpy as np
    import torch
    from omegaconf import DictConfig

    from datasets import Scene

    from .model import NeuSModel

CONFIG_FILE = "config.yaml"
STOP_FILE = "STOP"
NORMALIZATION_FILE = "normalization.json"
SOLVED_DIR = "solved"  # ``fit PHOTOS|VIDEO``: the cameras solved before training (kept for --resume)


@dataclass(frozen=True)
class RunDir:
    """The files of one run folder (the folder itself may not exist yet)."""

    path: Path

    @property
    def config_file(self) -> Path:
        """The full resolved config (written by ``fit``, read by ``--resume``, export, render and fidelity)."""
        return self.path / CONFIG_FILE

    @property
    def checkpoint(self) -> Path:
        """``checkpoints/last.ckpt``: the latest checkpoint (its weights are always finite)."""
        return self.path / "checkpoints" / "last.ckpt"

    @property
    def previous_checkpoint(self) -> Path:
        """``checkpoints/prev.ckpt``: the checkpoint before ``last.ckpt``, kept beside it."""
        return self.path / "checkpoints" / "prev.ckpt"

    @property
    def normalization_file(self) -> Path:
        return self.path / NORMALIZATION_FILE

    @property
    def stop_file(self) -> Path:
        """A file whose appearance asks the running command to stop (PROTOCOL.md, "Cancel and resume")."""
        return self.path / STOP_FILE

    @property
    def solved_dir(self) -> Path:
        return self.path / SOLVED_DIR

    # ------------------------------------------------------------------------------------------------ folder
    def require_writable(self) -> None:
        """A read-only run folder is bad input up front, not an internal error at the first write."""
        require_writable(self.path)

    def remove_stop_request(self, strict: bool = False) -> None:
        """Removes the STOP file an earlier run left, so it cannot stop this one. ``strict``: a STOP file that
        cannot be removed is bad input (else it is left, and stops the command at once)."""
        try:
            self.stop_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if strict:
                raise InputError(f"{self.stop_file}: cannot remove an earlier run's stop request "
                                 f"({exc.strerror or exc})") from exc

    # ------------------------------------------------------------------------------------------------ config
    def load_config(self) -> DictConfig:
        """The saved ``config.yaml`` through the schema (older runs read newer keys at their defaults)."""
        from .config import load_run_config

        with config_errors_as_input():
            return load_run_config(self.config_file)

    def save_config(self, cfg: DictConfig) -> None:
        from .atomic_files import atomic_write
        from .config import to_yaml

        with atomic_write(self.config_file, "w") as f:
            f.write(to_yaml(cfg))

    # ------------------------------------------------------------------------------------------- checkpoints
    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def read_checkpoint(self, resume: bool = False) -> dict:
        """``last.ckpt`` as saved (see :func:`read_checkpoint`)."""
        return read_checkpoint(self.checkpoint, resume=resume)

    def load_model(self, device: str = "auto") -> tuple[DictConfig, NeuSModel]:
        """Rebuilds the trained model from ``config.yaml`` and ``checkpoints/last.ckpt`` as it stood at the end of
        training, in eval mode on ``device`` (``auto``: the best available). Returns (cfg, model)."""
        from .device import select_device
        from .model import NeuSModel

        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: not a folder (expected a run folder written by `fit`)")
        for p in (self.config_file, self.checkpoint):
            if not p.is_file():
                raise InputError(f"{p}: not found (is {self.path} a run folder written by `fit`?)")
        cfg = self.load_config()
        torch_device = select_device(device)
        state = self.read_checkpoint()["state_dict"]
        with config_errors_as_input(self.config_file):
            model = NeuSModel(cfg.model)
            # The sharpness floor as it stood at the last step, so renders look like the end of training.
            model.min_inv_s.fill_(model.sharpness_floor(cfg.train.steps))
            progressive = cfg.model.geometry.progressive.enabled
            n_levels = cfg.model.geometry.encoding.n_levels
        load_weights(model, {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")},
                     self.checkpoint)
        if progressive:  # every level active, as at the end of training
            model.geometry.set_progress(n_levels)
        model.cos_anneal_ratio.fill_(1.0)
        return cfg, model.to(torch_device).eval()

    # ------------------------------------------------------------------------------------------------- scene
    @staticmethod
    def load_scene(cfg: DictConfig) -> Scene | None:
        """The run's training scene when its data folder is still there (photo colours need it), else None."""
        path = cfg.data.path
        if not path or not Path(path).is_dir():
            return None
        return load_scene(Path(path), cfg.data)


def require_writable(folder: Path) -> None:
    """A read-only folder is bad input up front, not an internal error at the first write."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"{folder}: the run folder is not writable ({exc.strerror or exc})") from exc


def read_checkpoint(path: Path, resume: bool = False) -> dict:
    """A checkpoint written by ``fit``; a damaged or foreign file is bad input naming it (exit 2).

    ``resume``: it must also hold the training state Lightning restores (optimizers, loops).
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except MemoryError:
        raise
    except Exception as exc:  # a damaged file fails in many ways: EOFError, UnpicklingError, RuntimeError (zip)...
        raise InputError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise InputError(f"{path}: not a checkpoint written by `fit` (no state_dict)")
    if resume and not all(k in state for k in ("global_step", "optimizer_states", "pytorch-lightning_version")):
        raise InputError(f"{path}: cannot resume from this checkpoint (it lacks the training state)")
    return state


def load_weights(module: torch.nn.Module, state_dict: dict, ckpt: Path) -> None:
    """``module.load_state_dict`` where a mismatch (another config or version wrote the checkpoint) is bad input."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise InputError(f"{ckpt}: the checkpoint does not fit the run's config.yaml (written by another config "
                         "or engine version?)") from exc


@contextlib.contextmanager
def config_errors_as_input(source: Path | None = None) -> Iterator[None]:
    """Config problems are bad input (exit 2, one line): a ConfigError as it is (it names the file or ``--set``), and
    a key missing from a saved (older or hand-edited) config.yaml, which surfaces while the model is built."""
    from omegaconf.errors import OmegaConfBaseException

    from .config import ConfigError

    try:
        yield
    except ConfigError as exc:
        raise InputError(str(exc)) from exc
    except OmegaConfBaseException as exc:
        where = "" if source is None else f"{source}: "
        raise InputError(f"{where}bad config: {str(exc).splitlines()[0]}") from exc


def load_scene(data_dir: Path, cfg_data: DictConfig) -> Scene:
    """The scene as a run's ``data`` section describes it (fit, and export/render with photo colours), reading its
    files with ``loading`` progress; a bad dataset is bad input."""
    import datasets

    from .region import region_of

    try:
        return datasets.load(data_dir, format=cfg_data.format, downscale=cfg_data.downscale,
                             cameras_file=cfg_data.cameras_file, split=cfg_data.split,
                             region=region_of(cfg_data, "region"),
                             progress=lambda done, total: tick("loading", done, total, "files"))
    except datasets.DatasetError as exc:
        raise InputError(str(exc)) from exc


def split_views(n_views: int, holdout_every: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out view indices, (T,) and (H,) int: every ``holdout_every``-th view is held out (none when
    0 or with fewer than 3 views)."""
    import numpy as np

    idx = np.arange(n_views)
    if holdout_every <= 0 or n_views < 3:
        return idx, idx[:0]
    held = idx[holdout_every // 2::holdout_every]
    return np.setdiff1d(idx, held), held
