"""The add-on's texture options become engine settings the engine's own config accepts (no bpy needed)."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, build_config
from neus_blender_addon.core.engine_process import texture_settings


def test_panel_texture_options_are_valid_engine_settings():
    cfg = build_config("preview", overrides=texture_settings("4096", "photos", 5000))
    assert cfg.export.texture is True
    assert (cfg.export.texture_size, cfg.export.color, cfg.export.faces) == (4096, "photos", 5000)
    cfg = build_config("preview", overrides=texture_settings(1024, "field", 0))
    assert (cfg.export.texture_size, cfg.export.color, cfg.export.faces) == (1024, "field", 0)


def test_colour_sources_agree_with_the_engine():
    from typing import get_args

    from engine.config_schema import ColorSource
    from neus_blender_addon.core.choices import COLOR_SOURCES

    assert set(COLOR_SOURCES) == set(get_args(ColorSource))


def test_engine_rejects_a_too_small_game_ready_face_count():
    with pytest.raises(ConfigError, match="export.faces"):
        build_config("preview", overrides=["export.faces=2"])
