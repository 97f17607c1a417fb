"""Add-on preferences: which Python runs the engine."""

# No `from __future__ import annotations`: Blender reads the property annotations as objects.
import textwrap

import bpy
from bpy.props import IntProperty, StringProperty

from .core import engine_process

ADDON_ID = __package__  # "neus_blender_addon", or "bl_ext.<repo>.neus_reconstruct" as an extension


def wrapped_labels(layout: bpy.types.UILayout, text: str, icon: str = "NONE", width: int = 70) -> None:
    """Multi-line text as labels (Blender labels do not wrap)."""
    first = True
    for para in text.splitlines() or [""]:
        for line in textwrap.wrap(para, width) or [""]:
            layout.label(text=line, icon=icon if first else "BLANK1")
            first = False


class NEUS_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    engine_python: StringProperty(
        name="Engine Python",
        description=("Interpreter of the environment where the engine (PyTorch) is installed, e.g. "
                     "<repo>/.venv/bin/python. Empty: $NEUS_ENGINE_PYTHON, else the .venv of the repository "
                     "this add-on lives in"),
        subtype="FILE_PATH",
        default="",
    )
    silence_limit: IntProperty(
        name="Not Responding After (s)",
        description=("Seconds without a word from the engine (it sends a heartbeat every 3 s) after which the panel "
                     "says it is not responding and offers Kill; after Cancel, an engine silent this long is killed. "
                     "An engine that keeps reporting, an export on cancel say, is never killed"),
        default=int(engine_process.DEFAULT_SILENCE_S), min=5, max=3600,
    )
    engine_status: StringProperty(name="Engine Status", default="")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "engine_python")
        layout.prop(self, "silence_limit")
        try:
            loc = engine_process.find_engine_python(self.engine_python)
            wrapped_labels(layout, f"Using {loc.describe()}", icon="CHECKMARK")
        except engine_process.EngineNotFoundError as e:
            wrapped_labels(layout.box(), str(e), icon="ERROR")
        layout.operator("neus.check_engine", icon="CONSOLE")
        if self.engine_status:
            wrapped_labels(layout.box(), self.engine_status, icon="INFO")


def get_preferences(context: bpy.types.Context | None = None) -> NEUS_AP_preferences | None:
    """The preferences, or None when the add-on was registered without being enabled (tests, headless)."""
    ctx = context or bpy.context
    addon = ctx.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def engine_python_setting(context: bpy.types.Context | None = None) -> str:
    """The Engine Python preference as an absolute path ("" when unset or not enabled as an add-on)."""
    prefs = get_preferences(context)
    path = prefs.engine_python.strip() if prefs is not None else ""
    return bpy.path.abspath(path) if path.startswith("//") else path


def silence_limit_setting(context: bpy.types.Context | None = None) -> float:
    """Seconds of engine silence that count as not responding (the default when not enabled as an add-on)."""
    prefs = get_preferences(context)
    return float(prefs.silence_limit) if prefs is not None else engine_process.DEFAULT_SILENCE_S


classes = (NEUS_AP_preferences,)
