"""Configuration: the schema (``engine/config_schema.py``) <- preset <- format defaults <- --config <- --set.

The dataclasses in ``config_schema`` are the only source of keys, types, defaults and allowed values; the YAML files
in ``engine/configs/`` override some of them. OmegaConf refuses unknown keys and values of the wrong type while
merging; ``check_values`` adds the minimums and schedule shapes it cannot express. Both fail as one ``ConfigError``
line before anything is written (exit code 2).
"""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from omegaconf import Container, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .config_schema import PRESETS, RENAMED, RETIRED, ExportConfig, RunConfig
from .errors import InputError

CONFIG_DIR = Path(__file__).parent / "configs"
FORMAT_DEFAULTS = {"dtu": "dtu", "dtu_mask": "dtu_mask", "blender": "blender", "colmap": "colmap"}
RUN_SECTIONS = ("data", "model", "train", "export")
__all__ = ["PRESETS", "ConfigError", "build_config", "load_run_config", "check_values", "check_flags", "merge_flags",
           "export_settings", "settings_from_flags", "resolve_auto", "resolve_accelerators", "to_yaml"]

Layer = tuple[str | None, DictConfig]  # (where it came from, for error messages; its values)


class ConfigError(InputError, ValueError):
    """A bad preset, config file, override or command-line setting: bad input (kind ``input``, exit code 2)."""


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        # YAML errors span lines (problem, then where): fold them into one.
        raise ConfigError(f"{path}: cannot read config: {' '.join(str(exc).split())}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping")
    return cfg


# ---------------------------------------------------------------------------------------------- schema look-ups
def _schema_field(key: str, cls: type = RunConfig) -> dataclasses.Field | None:
    """The schema field at a dotted key (``train.loss.eikonal``) of ``cls``, or None when there is none."""
    found = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        found = next((f for f in dataclasses.fields(cls) if f.name == part), None)
        if found is None:
            return None
        cls = found.type
    return found


def _describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like, in words."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(dict.fromkeys(str(c).lower() for c in args))  # as written in YAML, once each
    if origin is list:
        inner = args[0] if args else Any
        return "a list of " + (", ".join(map(str, get_args(inner))) if get_origin(inner) is Literal else "values")
    if origin in (Union, types.UnionType):
        kinds = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _shown(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, Container) else value


def _section_given_a_value(layer: DictConfig, cls: type = RunConfig, prefix: str = "") -> str | None:
    """The first key of ``layer`` where the schema has a section but the layer a plain value (OmegaConf's merge
    error does not name it)."""
    for f in dataclasses.fields(cls):
        if f.name not in layer or not dataclasses.is_dataclass(f.type):
            continue
        value = layer[f.name]
        if not isinstance(value, DictConfig):
            return prefix + f.name
        found = _section_given_a_value(value, f.type, prefix + f.name + ".")
        if found:
            return found
    return None


def _schema_error(exc: OmegaConfBaseException, layers: list[Layer]) -> ConfigError:
    """One line for a merge failure: the key, what it must be, the value given and which layer gave it."""
    key = str(getattr(exc, "full_key", None) or "")
    if not key:
        key = next((k for _, layer in reversed(layers) if (k := _section_given_a_value(layer))), "")
    base = re.sub(r"(\[\d+\])+$", "", key)
    missing = object()
    given, source = missing, None
    for name, layer in reversed(layers):
        value = OmegaConf.select(layer, base, default=missing, throw_on_resolution_failure=False) if base else missing
        if value is not missing:
            given, source = value, name
            break
    where = f" (in {source})" if source else ""
    if isinstance(exc, ConfigKeyError) and base:
        return ConfigError(f"bad config: unknown key {base}{where}")
    found = _schema_field(base) if base else None
    if found is None or given is missing:
        return ConfigError(f"bad config: {str(exc).splitlines()[0]}{where}")
    return ConfigError(f"bad config: {base} must be {_describe(found.type)}, got {_shown(given)!r}{where}")


def _merge(layers: list[Layer]) -> DictConfig:
    """The schema's defaults with ``layers`` merged on top, in order (a typed, struct-mode config)."""
    try:
        return OmegaConf.merge(OmegaConf.structured(RunConfig), *(layer for _, layer in layers))
    except OmegaConfBaseException as exc:
        raise _schema_error(exc, layers) from exc


# ---------------------------------------------------------------------------------------------- value rules
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _schedule_ends(name: str, value: Any) -> list[float]:
    """The values a schedulable setting takes (a number, or a schedule's start and end); refuses anything else."""
    if _is_number(value):
        return [float(value)]
    if isinstance(value, DictConfig):
        keys = set(value.keys())
        if {"start", "end", "end_step"} <= keys <= {"start", "end", "start_step", "end_step"} and all(
                _is_number(value[k]) for k in keys):
            return [float(value.start), float(value.end)]
    raise ConfigError(f"bad config: {name} must be a number or a schedule {{start, end, start_step, end_step}}, "
                      f"got {_shown(value)!r}")


def _problem(meta, value: Any, name: str, as_flag: bool = False) -> str | None:
    """What is wrong with ``value`` by a field's rules (``meta``: its metadata), as 'NAME must be ...', or None.

    ``as_flag``: the wording of a command-line flag (``--resolution must be at least 2, got 1``); else that of a
    config key (``bad config: export.resolution must be >= 2, got 1``)."""
    values = _schedule_ends(name, value) if meta.get("schedule") else [value]
    low, high = meta.get("min"), meta.get("max")
    prefix, got = (f"{name} must be", f"got {value}") if as_flag else (f"bad config: {name} must be",
                                                                        f"got {_shown(value)!r}")
    for v in values:
        if not _is_number(v):
            continue
        if as_flag and low is not None and high is not None and not low <= v <= high:
            return f"{prefix} between {low} and {high}, {got}"
        if high is not None and not v <= high:
            return f"{prefix} <= {high}, {got}"
        if low is None:
            continue
        if meta.get("strict") and not v > low:
            return f"{prefix} positive, {got}"
        if not v >= low:
            return f"{prefix} {'at least' if as_flag else '>='} {low}, {got}"
    if "rule" in meta and not meta["rule"](value):
        return f"{prefix} {meta['problem']}, {got}"
    return None


def check_values(cfg: DictConfig, cls: type = RunConfig, prefix: str = "") -> None:
    """Checks the rules of ``cls``'s field metadata (``at_least``, ``between``, ``positive``, ``schedule``, ``checked``)
    on the section ``cfg``, recursively."""
    for f in dataclasses.fields(cls):
        name, value = prefix + f.name, cfg[f.name]
        if dataclasses.is_dataclass(f.type):
            check_values(value, f.type, name + ".")
            continue
        problem = _problem(f.metadata, value, name)
        if problem:
            raise ConfigError(problem)


# ---------------------------------------------------------------------------------------------- command-line flags
Flags = dict[str, tuple[str, Any]]  # dotted key -> (the flag that sets it, its value; None: not given)


def check_flags(flags: Flags, cls: type = RunConfig, rules: dict[str, str] | None = None) -> None:
    """The values of command-line flags against the rules of the schema fields they set (``cls``), before any file
    is read: ConfigError naming the flag (``--resolution must be at least 2, got 1``).

    ``rules``: {key: other key} where a flag follows another field's rules (``--faces`` gives a face count, as
    ``export.texture_faces``, where the config's ``export.faces`` also takes 0 for off)."""
    for key, (flag, value) in flags.items():
        if value is None:
            continue
        found = _schema_field((rules or {}).get(key, key), cls)
        if found is None:
            raise KeyError(f"{key}: no such setting in {cls.__name__}")
        problem = _problem(found.metadata, value, flag, as_flag=True)
        if problem:
            raise ConfigError(problem)


def merge_flags(cfg: DictConfig, flags: Flags) -> DictConfig:
    """``cfg`` with the flags that were given (value not None) merged over it through OmegaConf (type-checked by
    the schema); :func:`check_flags` checked their values first."""
    layer = OmegaConf.create()
    for key, (_, value) in flags.items():
        if value is not None:
            OmegaConf.update(layer, key, value, force_add=True)
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "")
        flag, value = flags.get(key, (key, None))
        raise ConfigError(f"{flag}: {str(exc).splitlines()[0]}, got {value!r}") from exc


def export_settings(cfg: DictConfig) -> ExportConfig:
    """The ``export`` section of a checked run config as the schema's dataclass (typed attributes, no casts)."""
    return OmegaConf.to_object(cfg.export)


def settings_from_flags(cls: type, flags: Flags) -> Any:
    """An instance of the schema dataclass ``cls`` (e.g. ``SolveConfig``): its defaults, the given flags over them."""
    check_flags(flags, cls)
    return OmegaConf.to_object(merge_flags(OmegaConf.structured(cls), flags))


def _checked(cfg: DictConfig) -> DictConfig:
    try:
        check_values(cfg)
    except OmegaConfBaseException as exc:  # e.g. a schedule interpolating a key that does not exist
        raise ConfigError(f"bad config: {str(exc).splitlines()[0]}") from exc
    return cfg


# ---------------------------------------------------------------------------------------------- building
def _default_layers(preset: str, fmt: str | None, masked: bool) -> list[Layer]:
    """preset <- format defaults (``dtu_mask`` for DTU with masks) <- ``no_mask`` when training without."""
    names = [preset]
    name = "dtu_mask" if fmt == "dtu" and masked else fmt
    if name in FORMAT_DEFAULTS:
        names.append(FORMAT_DEFAULTS[name])
    if not masked:
        names.append("no_mask")
    paths = [CONFIG_DIR / f"{n}.yaml" for n in names]
    return [(str(p), _load_yaml(p)) for p in paths]


def build_config(preset: str = "preview", fmt: str | None = None, has_masks: bool = False,
                 config_file: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Merges the layers over the schema's defaults into one typed config.

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
    user: list[Layer] = []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        user.append((str(path), _load_yaml(path)))
    for item in overrides or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"bad override {item!r}: expected key=value")
    try:
        user.append(("--set", OmegaConf.from_dotlist(list(overrides or []))))
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"bad config: {str(exc).splitlines()[0]}") from exc
    # The defaults depend on whether masks will be used, which the user's layers may decide: merge twice.
    cfg = _merge(_default_layers(preset, fmt, has_masks) + user)
    masked = has_masks and cfg.data.use_mask is not False
    if masked != has_masks:
        cfg = _merge(_default_layers(preset, fmt, masked) + user)
    cfg.preset = preset
    return _checked(cfg)


def _upgrade(raw: DictConfig) -> None:
    """Drops the keys older engines wrote that no longer exist and moves renamed ones (in place)."""
    missing = object()
    for old in (*RETIRED, *RENAMED):
        parent_key, _, leaf = old.rpartition(".")
        parent = OmegaConf.select(raw, parent_key, default=None, throw_on_resolution_failure=False)
        if not isinstance(parent, DictConfig) or leaf not in parent:
            continue
        value = parent[leaf]
        del parent[leaf]
        new = RENAMED.get(old)
        if new is not None and OmegaConf.select(raw, new, default=missing) is missing:
            OmegaConf.update(raw, new, value, merge=False)


def load_run_config(path: Path) -> DictConfig:
    """A run's saved ``config.yaml``, read through the schema: keys added since the run was written take their
    defaults, retired keys are dropped, and a damaged or hand-edited file fails here, named, not deep in the
    model."""
    raw = _load_yaml(path)
    for section in RUN_SECTIONS:
        if not isinstance(raw.get(section), DictConfig):
            raise ConfigError(f"{path}: not a run config (no '{section}' section)")
    _upgrade(raw)
    try:
        return _checked(_merge([(None, raw)]))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------- resolution
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
