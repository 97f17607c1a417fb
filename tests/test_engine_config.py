"""Config checks: values the code cannot use are refused when the config is built, before anything is written."""

from __future__ import annotations

import pytest

from engine.config import PRESETS, ConfigError, build_config, load_run_config, to_yaml
from engine.config_schema import ProgressiveConfig, TrainConfig


@pytest.mark.parametrize("override, problem", [
    ("train.steps=-5", "train.steps must be >= 1"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("export.resolution=0", "export.resolution must be >= 2"),
    ("export.texture_size=8", "export.texture_size must be >= 16"),
    ("export.texture_size=16385", "export.texture_size must be <= 16384"),
    ("train.preview_resolution=1", "train.preview_resolution must be >= 2"),
    ("data.downscale=0", "data.downscale must be >= 1"),
    ("data.holdout_every=-1", "data.holdout_every must be >= 0"),
    ("model.radius=0", "model.radius must be positive"),
    ("model.num_samples_per_ray=0", "model.num_samples_per_ray must be >= 1"),
    ("model.geometry.encoding.n_levels=0", "n_levels must be >= 1"),
    ("train.lr=-0.01", "train.lr must be >= 0"),
    ("export.decimate=2", "export.decimate must be 0"),
    ("export.texture_size=0", "export.texture_size must be >= 16"),
    ("export.formats=[stl]", "export.formats must be a list of ply, obj, glb"),
    ("export.formats=obj", "export.formats must be a list"),
    ("export.frame=world_frame", "export.frame must be one of normalized, world"),
    ("export.method=voxels", "export.method must be one of auto, marching_cubes, surface_nets"),
    ("export.color=vertex", "export.color must be one of field, photos"),
    ("data.background=purple", "data.background must be one of auto, white, black, random"),
    ("data.use_mask=sometimes", "data.use_mask must be one of auto, true, false"),
    ("model.geometry.grad_mode=magic", "grad_mode must be one of closed_form"),
    ("train.precision=7", "train.precision must be one of"),
    ("train.steps=abc", "train.steps must be an integer"),
])
def test_unusable_values_are_refused(override, problem):
    with pytest.raises(ConfigError) as info:
        build_config("preview", "dtu", overrides=[override])
    assert problem in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["train.precision=bf16-mixed", "train.precision=32", "data.use_mask=false",
                                      "accel.tcnn=false", "export.formats=[obj,glb]", "export.coarse_resolution=0",
                                      "train.loss.eikonal={start: 0.1, end: 0.01, end_step: 100}"])
def test_documented_values_are_accepted(override):
    build_config("preview", "dtu", overrides=[override])


def test_every_preset_and_format_default_is_valid():
    for preset in PRESETS:
        for fmt in (None, "dtu", "blender", "colmap"):
            for masks in (False, True):
                build_config(preset, fmt, has_masks=masks)


def test_config_file_with_a_yaml_error_names_the_file_on_one_line(tmp_path):
    bad = tmp_path / "extra.yaml"
    bad.write_text("train: [\n")
    with pytest.raises(ConfigError) as info:
        build_config("preview", config_file=bad)
    assert str(bad) in str(info.value) and "line 2" in str(info.value) and "\n" not in str(info.value)


def test_saved_run_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(build_config("preview", "dtu")))
    assert load_run_config(path).train.steps == build_config("preview", "dtu").train.steps
    for text, problem in [("seed: 1\n", "not a run config"), ("- 1\n", "must hold a mapping"),
                          ("model: [unclosed\n", "cannot read config"), ("", "not a run config")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=problem) as info:
            load_run_config(path)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    path.write_text(to_yaml(build_config("preview", "dtu")).replace("steps: 1500", "steps: -1"))
    with pytest.raises(ConfigError, match="train.steps must be >= 1"):
        load_run_config(path)


def test_no_mask_defaults_apply_exactly_when_training_without_masks():
    with_masks = build_config("preview", "dtu", has_masks=True)
    assert with_masks.model.min_inv_s == 0.0 and with_masks.train.loss.sparsity > 0  # dtu_mask layer
    assert with_masks.train.loss.sweep == 0  # the mask says where the thin parts are
    for cfg in (build_config("preview", "colmap", has_masks=False),
                build_config("preview", "dtu", has_masks=True, overrides=["data.use_mask=false"])):
        assert cfg.model.background.start_radius == 2.0
        assert cfg.model.min_inv_s.end_step == cfg.train.steps  # the floor rises over the whole run
        assert cfg.train.loss.sparsity == 0.0  # masks switched off: not the dtu_mask defaults either
        assert cfg.train.loss.sweep > 0  # engine/photo_sweep.py
    # The user's layers still win over the no-mask defaults.
    cfg = build_config("quality", "colmap", overrides=["model.min_inv_s=0", "model.background.start_radius=1.5"])
    assert cfg.model.min_inv_s == 0 and cfg.model.background.start_radius == 1.5
    assert build_config("fast", "colmap").model.min_inv_s.end_step == build_config("fast").train.steps


def test_saved_run_from_an_older_engine_loads_through_the_schema(tmp_path):
    """Keys added since a run was written take their defaults; retired keys are dropped, renamed ones moved."""
    import yaml

    saved = yaml.safe_load(to_yaml(build_config("preview", "dtu")))
    del saved["train"]["static_fill"]  # added after this (pretend) run was written
    del saved["model"]["geometry"]["progressive"]  # a whole section too
    saved["train"]["progress_interval_s"] = 0.1  # written by older engines, read nowhere
    saved["model"]["occupancy"]["warmup_steps"] = saved["model"]["occupancy"].pop("start_step") + 7
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    cfg = load_run_config(path)
    assert cfg.train.static_fill == TrainConfig().static_fill
    assert cfg.model.geometry.progressive.update_steps == ProgressiveConfig().update_steps
    assert "progress_interval_s" not in cfg.train
    assert cfg.model.occupancy.start_step == saved["model"]["occupancy"]["warmup_steps"]
    saved["train"]["stepz"] = 3  # a key no engine wrote: refused, naming the file
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="unknown key train.stepz") as info:
        load_run_config(path)
    assert str(info.value).startswith(str(path))


def test_schema_errors_name_the_key_the_expected_type_and_the_layer(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  stepz: 4\n")
    for kwargs, problem in [
        ({"overrides": ["train.stepz=3"]}, "unknown key train.stepz (in --set)"),
        ({"config_file": extra}, f"unknown key train.stepz (in {extra})"),
        ({"overrides": ["data.cameras_file=[1]"]}, "data.cameras_file must be a string or null, got [1]"),
        ({"overrides": ["model.min_inv_s=abc"]}, "model.min_inv_s must be a number or a schedule"),
        ({"overrides": ["train.loss.eikonal={start: 0.1, end: -1, end_step: 9}"]}, "eikonal must be >= 0"),
        ({"overrides": ["model.occupancy.update_fraction=2"]}, "update_fraction must be in (0, 1]"),
        ({"overrides": ["model.geometry=5"]}, "model.geometry must be a mapping, got 5 (in --set)"),
    ]:
        with pytest.raises(ConfigError) as info:
            build_config("preview", "dtu", **kwargs)
        assert problem in str(info.value) and "\n" not in str(info.value)


def test_every_schema_field_has_a_docstring():
    """The schema documents each key once, as a docstring under its field."""
    import ast
    import inspect

    from engine import config_schema

    tree = ast.parse(inspect.getsource(config_schema))
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes
    for cls in classes:
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                documented = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(
                    nxt.value.value, str)
                assert documented, f"{cls.name}.{node.target.id} has no docstring"


def test_export_settings_are_the_schema_dataclass_with_the_flags_merged_over_them():
    from engine.config import check_flags, export_settings, merge_flags
    from engine.config_schema import ExportConfig

    cfg = build_config("preview", "dtu", overrides=["export.formats=[obj]"])
    flags = {"export.resolution": ("--resolution", 40), "export.frame": ("--frame", None),
             "export.texture": ("--texture", True)}
    check_flags(flags)
    opts = export_settings(merge_flags(cfg, flags))
    assert isinstance(opts, ExportConfig) and opts.resolution == 40 and opts.frame == cfg.export.frame
    assert opts.formats == ["obj"] and opts.texture is True
    # A flag is checked by the rules of the field it sets, and named in the one line.
    for flags, problem in [({"export.resolution": ("--resolution", 1)}, "--resolution must be at least 2, got 1"),
                           ({"export.texture_size": ("--texture-size", 16385)},
                            "--texture-size must be between 16 and 16384, got 16385")]:
        with pytest.raises(ConfigError, match=problem):
            check_flags(flags)


def test_solve_settings_come_from_the_schema_with_the_flags_over_them():
    from engine.config import settings_from_flags
    from engine.config_schema import SolveConfig

    assert settings_from_flags(SolveConfig, {"fps": ("--fps", None)}) == SolveConfig()
    got = settings_from_flags(SolveConfig, {"matcher": ("--matcher", "sequential"), "max_frames": ("--max-frames", 9)})
    assert got == SolveConfig(matcher="sequential", max_frames=9)
    for key, flag, value, problem in [("max_image_size", "--max-image-size", 100, "must be at least 200, got 100"),
                                      ("fps", "--fps", 0.0, "must be positive, got 0.0"),
                                      ("max_frames", "--max-frames", 2, "must be at least 3, got 2"),
                                      ("min_placed", "--min-placed", 1.5, "must be between 0 and 1, got 1.5"),
                                      ("camera", "--camera", "two", "--camera: ")]:
        with pytest.raises(ConfigError, match=problem if problem.startswith("--") else f"{flag} {problem}"):
            settings_from_flags(SolveConfig, {key: (flag, value)})
