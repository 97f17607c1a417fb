"""Configuration: OmegaConf YAML files merged as base <- preset <- format defaults <- --config <- --set."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = ("preview", "fast", "quality")
FORMAT_DEFAULTS = {"dtu": "dtu", "dtu_mask": "dtu_mask", "blender": "blender", "colmap": "colmap"}


class ConfigError(ValueError):
    """A bad preset, config file or override (reported as bad input, exit code 2)."""


# Values the code needs from a set or in a range. Checked when the config is built, so a bad --set fails before
# anything is written instead of deep in training or export (which would leave a config and checkpoint behind).
CHOICES: dict[str, tuple] = {
    "data.use_mask": ("auto", True, False),
    "data.background": ("auto", "white", "black", "random"),
    "model.geometry.grad_mode": ("closed_form", "autograd", "finite_difference"),
    "model.sampler": ("packed", "static"),
    "accel.tcnn": ("auto", True, False),
    "accel.nerfacc": ("auto", True, False),
    "train.compile": ("auto", True, False),
    "train.cuda_graphs": (True, False),
    "train.precision": (32, 16, 64, "32", "16", "64", "bf16", "32-true", "16-true", "16-mixed", "bf16-true",
                        "bf16-mixed", "64-true"),
    "export.method": ("auto", "marching_cubes", "surface_nets"),
    "export.color": ("field", "photos"),
    "export.frame": ("normalized", "world"),
}
EXPORT_FORMATS = ("ply", "obj", "glb")
MINIMUM: dict[str, float] = {
    "data.downscale": 1,
    "data.holdout_every": 0,
    "model.num_samples_per_ray": 1,
    "model.geometry.encoding.n_levels": 1,
    "train.steps": 1,
    "train.lr": 0,
    "train.lr_geometry_encoding": 0,
    "train.lr_variance": 0,
    "train.lr_background": 0,
    "train.weight_decay": 0,
    "train.target_samples": 1,
    "train.init_rays": 1,
    "train.min_rays": 1,
    "train.max_rays": 1,
    "train.static_adapt_every": 1,
    "train.devices": 1,
    "train.val_every": 0,
    "train.val_max_views": 1,
    "train.val_downscale": 1,
    "train.preview_every": 0,
    "train.preview_resolution": 2,
    "train.checkpoint_every_steps": 0,
    "export.resolution": 2,
    "export.coarse_resolution": 0,
    "export.chunk": 1,
    "export.texture_size": 16,
    "export.decimate": 0,
}
POSITIVE = ("model.radius", "train.static_fill")  # strictly above zero


def validate(cfg: DictConfig) -> None:
    """Checks ``CHOICES``, ``MINIMUM``, ``POSITIVE`` and ``export.formats`` (schedules in place of numbers pass)."""
    def get(key: str):
        return OmegaConf.select(cfg, key, default=None)

    for key, choices in CHOICES.items():
        value = get(key)
        if value is not None and not any(value == c and type(value) is type(c) for c in choices):
            names = ", ".join(dict.fromkeys(str(c).lower() for c in choices))  # as written in YAML, once each
            raise ConfigError(f"bad config: {key} must be one of {names}; got {value!r}")
    for key, low in MINIMUM.items():
        value = get(key)
        if isinstance(value, int | float) and not value >= low:
            raise ConfigError(f"bad config: {key} must be >= {low}, got {value!r}")
    for key in POSITIVE:
        value = get(key)
        if isinstance(value, int | float) and not value > 0:
            raise ConfigError(f"bad config: {key} must be positive, got {value!r}")
    formats = get("export.formats")
    if formats is not None and (isinstance(formats, str) or any(f not in EXPORT_FORMATS for f in formats)):
        raise ConfigError(f"bad config: export.formats must be a list of {', '.join(EXPORT_FORMATS)}; got {formats}")
    decimate = get("export.decimate")
    if isinstance(decimate, int) and 0 < decimate < 4:
        raise ConfigError(f"bad config: export.decimate must be 0 (keep every face) or >= 4, got {decimate}")


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        # YAML errors span lines (problem, then where): fold them into one.
        raise ConfigError(f"{path}: cannot read config: {' '.join(str(exc).split())}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping")
    return cfg


def _default_layers(base: DictConfig, preset: str, fmt: str | None, masked: bool) -> list[DictConfig]:
    """base <- preset <- format defaults (``dtu_mask`` for DTU with masks) <- ``no_mask`` when training without."""
    layers = [base, _load_yaml(CONFIG_DIR / f"{preset}.yaml")]
    name = "dtu_mask" if fmt == "dtu" and masked else fmt
    if name in FORMAT_DEFAULTS:
        layers.append(_load_yaml(CONFIG_DIR / f"{FORMAT_DEFAULTS[name]}.yaml"))
    if not masked:
        layers.append(_load_yaml(CONFIG_DIR / "no_mask.yaml"))
    return layers


def build_config(preset: str = "preview", fmt: str | None = None, has_masks: bool = False,
                 config_file: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Merges the layers into one config.

    Args:
        preset: one of ``PRESETS``.
        fmt: the scene's format (``dtu``, ``blender``, ``colmap``) for per-format defaults, or None.
        has_masks: whether the scene has masks (used unless ``data.use_mask`` is false; trained without them,
            the ``no_mask`` defaults apply).
        config_file: optional user YAML.
        overrides: ``key=value`` strings (OmegaConf dotlist syntax).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    user = []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        user.append(_load_yaml(path))
    for item in overrides or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"bad override {item!r}: expected key=value")
    base = _load_yaml(CONFIG_DIR / "base.yaml")
    # Struct mode: a misspelt key in a preset, a config file or an override is an error, not silently ignored.
    OmegaConf.set_struct(base, True)
    try:
        user.append(OmegaConf.from_dotlist(list(overrides or [])))
        # The defaults depend on whether masks will be used, which the user's layers may decide: merge twice.
        cfg = OmegaConf.merge(*_default_layers(base, preset, fmt, has_masks), *user)
        masked = has_masks and cfg.data.use_mask is not False
        if masked != has_masks:
            cfg = OmegaConf.merge(*_default_layers(base, preset, fmt, masked), *user)
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"bad config: {str(exc).splitlines()[0]}") from exc
    _check_types(base, cfg, "")
    validate(cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.preset = preset
    return cfg


RUN_SECTIONS = ("data", "model", "train", "export")


def load_run_config(path: Path) -> DictConfig:
    """A run's saved ``config.yaml``: a damaged or hand-edited file fails here, named, rather than deep in the
    model. Keys added to ``base.yaml`` since the run was written may be absent (callers report a missing key
    as bad input too)."""
    cfg = _load_yaml(path)
    for section in RUN_SECTIONS:
        if not isinstance(cfg.get(section), DictConfig):
            raise ConfigError(f"{path}: not a run config (no '{section}' section)")
    try:
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", ListConfig: "a list"}


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
        if name in CHOICES:
            ok = True  # validate() checks the value against its list (train.precision: 32 or "bf16-mixed")
        if not ok:
            kind = _KINDS.get(type(default), f"a {type(default).__name__}")
            raise ConfigError(f"bad config: {name} must be {kind}, got {value!r}")


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
