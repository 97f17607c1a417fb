"""Error kinds of the command line (they map to the protocol's ``error.kind`` and the exit codes)."""


class EngineError(Exception):
    kind = "internal"
    exit_code = 1


class InputError(EngineError):
    """Bad data, arguments or config: exit code 2, one-line message naming the file and the problem."""

    kind = "input"
    exit_code = 2


class DeviceError(EngineError):
    """The requested device is missing or ran out of memory."""

    kind = "device"
    exit_code = 1


class Cancelled(Exception):
    """Raised when the user stops the engine outside of the training loop."""
