"""Configuration: OmegaConf YAML files merged as base <- preset <- format defaults <- --config <- --set."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = ("preview", "fast", "quality")
FORMAT_DEFAULTS = {"dtu": "dtu", "dtu_mask": "dtu_mask", "blender": "blender", "colmap": "colmap"}


class ConfigError(ValueError):
    """A bad preset, config file or override (reported as bad input, exit code 2)."""


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read config: {str(exc).splitlines()[0]}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping")
    return cfg


def build_config(preset: str = "preview", fmt: str | None = None, has_masks: bool = False,
                 config_file: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Merges the layers into one config.

    Args:
        preset: one of ``PRESETS``.
        fmt: the scene's format (``dtu``, ``blender``, ``colmap``) for per-format defaults, or None.
        has_masks: whether the scene has masks (DTU with masks uses the ``dtu_mask`` defaults).
        config_file: optional user YAML.
        overrides: ``key=value`` strings (OmegaConf dotlist syntax).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    layers = [_load_yaml(CONFIG_DIR / "base.yaml"), _load_yaml(CONFIG_DIR / f"{preset}.yaml")]
    if fmt is not None:
        name = "dtu_mask" if fmt == "dtu" and has_masks else fmt
        if name in FORMAT_DEFAULTS:
            layers.append(_load_yaml(CONFIG_DIR / f"{FORMAT_DEFAULTS[name]}.yaml"))
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        layers.append(_load_yaml(path))
    for item in overrides or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"bad override {item!r}: expected key=value")
    # Struct mode: a misspelt key in a preset, a config file or an override is an error, not silently ignored.
    OmegaConf.set_struct(layers[0], True)
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        cfg = OmegaConf.merge(*layers)
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"bad config: {str(exc).splitlines()[0]}") from exc
    _check_types(layers[0], cfg, "")
    OmegaConf.set_struct(cfg, False)
    cfg.preset = preset
    return cfg


def _check_types(base: DictConfig, cfg: DictConfig, prefix: str) -> None:
    """Every value keeps the type of its default (ints may stand for floats; null stays allowed where it was)."""
    for key, default in base.items_ex(resolve=False):
        value = cfg[key]
        name = f"{prefix}{key}"
        if isinstance(default, DictConfig):
            if isinstance(value, DictConfig):
                _check_types(default, value, name + ".")
            elif key not in ("geometry", "background") or value is not None:
                raise ConfigError(f"bad config: {name} must be a mapping")
            continue
        if default is None or value is None and default is None:
            continue
        ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, bool):
            ok = False
        if isinstance(default, int | float) and not isinstance(default, bool) and isinstance(value, DictConfig):
            ok = True  # a schedule {start, end, start_step, end_step} in place of a number
        if isinstance(default, str) and default == "auto" and isinstance(value, bool | str):
            ok = True  # "auto" switches also take true/false
        if isinstance(default, bool) and isinstance(value, str) and value == "auto":
            ok = True
        if not ok:
            raise ConfigError(f"bad config: {name} must be a {type(default).__name__}, got {value!r}")


def resolve_auto(cfg: DictConfig, has_masks: bool, device_type: str) -> DictConfig:
    """Replaces ``auto`` values once the scene and device are known (in place; returns cfg)."""
    use_mask = cfg.data.use_mask
    if use_mask == "auto":
        use_mask = has_masks
    cfg.data.use_mask = bool(use_mask) and has_masks
    if cfg.model.background.enabled == "auto":
        cfg.model.background.enabled = not cfg.data.use_mask
    if cfg.data.background == "auto":
        cfg.data.background = "random" if cfg.data.use_mask else "white"
    if cfg.train.compile == "auto":
        cfg.train.compile = device_type == "cuda"
    return cfg


def resolve_accelerators(cfg: DictConfig, device) -> DictConfig:
    """Switches the hash grid to tinycudann and the scans to nerfacc where configured and possible (in place)."""
    from .accel import want

    if want(cfg.accel.tcnn, "tinycudann", device) and cfg.model.geometry.encoding.otype == "HashGrid":
        cfg.model.geometry.encoding.otype = "TcnnHashGrid"
        if cfg.model.geometry.grad_mode == "closed_form":
            cfg.model.geometry.grad_mode = "finite_difference"
    cfg.model.use_nerfacc = want(cfg.accel.nerfacc, "nerfacc", device)
    cfg.accel.tcnn = cfg.model.geometry.encoding.otype == "TcnnHashGrid"
    cfg.accel.nerfacc = bool(cfg.model.use_nerfacc)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
