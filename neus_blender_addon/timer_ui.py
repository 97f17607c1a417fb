"""Telling the artist from a ``bpy.app.timers`` function, where no operator is there to report: reports (status
bar and Info log, plus a popup for a failure or a cancel), the status-bar text and sidebar redraws. Shared by
reconstructions, camera solves and the background engine check."""

import contextlib
import textwrap

import bpy

POPUP_TITLE = "NeuS Reconstruct"

reports: list[tuple[str, str]] = []  # (level, message) reported from timers, newest last (the UI and tests)


def windows() -> list:
    return [w for wm in bpy.data.window_managers for w in wm.windows]


def window_context():
    """Timers run without a window in the context; operators called from them need one."""
    wins = windows()
    if bpy.context.window is not None or not wins:
        return contextlib.nullcontext()
    return bpy.context.temp_override(window=wins[0], screen=wins[0].screen)


def report(level: str, message: str) -> None:
    """Reports like an operator does (status bar, Info log; the console in background mode)."""
    reports.append((level, message))
    del reports[:-50]
    try:
        with window_context():
            bpy.ops.neus.report(level=level, message=message)
    except (RuntimeError, AttributeError):  # bpy.ops raises on an ERROR report, after showing it
        pass
    if level != "INFO" and not bpy.app.background:
        _popup(level, message)


def _popup(level: str, message: str) -> None:
    """A failure or cancel also opens a small popup, which the artist sees wherever the mouse is."""

    def draw(menu, _context):
        for line in textwrap.wrap(message, 80) or [""]:
            menu.layout.label(text=line)

    try:
        with window_context():
            bpy.context.window_manager.popup_menu(draw, title=POPUP_TITLE,
                                                  icon="ERROR" if level == "ERROR" else "INFO")
    except (RuntimeError, AttributeError, TypeError):
        pass


def set_status_bar(text: str | None) -> None:
    """The status bar's text while the engine works (None gives the status bar back to Blender)."""
    for win in windows():
        try:
            win.workspace.status_text_set(text)
        except (AttributeError, RuntimeError, TypeError):
            pass


def redraw_sidebars() -> None:
    """Only the 3D Viewport sidebars (where the panel lives) are redrawn."""
    for win in windows():
        for area in win.screen.areas:
            if area.type == "VIEW_3D":
                for region in area.regions:
                    if region.type == "UI":
                        region.tag_redraw()
