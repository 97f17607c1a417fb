"""The add-on's one error type. No bpy.

Everything below the operators (engine lookup, run folders, dataset checks, the run state machine) raises
:class:`AddonError` with a message fit for the artist; the operator or timer that started the work reports it
once (status bar / Info, and the panel), the way glTF-Blender-IO's importer raises its own error and its operator
reports it. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class AddonError(Exception):
    """A failure the artist can act on: the message names the file or setting and the problem."""


@contextlib.contextmanager
def as_addon_error(*kinds: type[Exception]) -> Iterator[None]:
    """Re-raises ``kinds`` (e.g. ``datasets``' ``DatasetError``, a ValueError whose message already names the file)
    as :class:`AddonError` with the same message, so the operators catch one type."""
    try:
        yield
    except AddonError:
        raise
    except kinds as e:
        raise AddonError(str(e)) from e
