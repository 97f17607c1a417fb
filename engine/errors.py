"""Error kinds of the command line (they map to the protocol's ``error.kind`` and the exit codes)."""


class EngineError(Exception):
    kind = "internal"
    exit_code = 1


class InputError(EngineError):
    """Bad data, arguments or config: exit code 2, one-line message naming the file and the problem."""

    kind = "input"
    exit_code = 2


class DeviceError(EngineError):
    """The requested device is missing (a bad argument: exit 2) or ran out of memory (exit 1)."""

    kind = "device"
    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Cancelled(Exception):
    """Raised when the user stops the engine outside of the training loop."""


class Diverged(EngineError):
    """Training kept producing non-finite losses or gradients after every allowed rollback: exit 1, kind
    ``diverged``; the last good checkpoint is kept."""

    kind = "diverged"
    exit_code = 1


class DiskFull(EngineError):
    """A write failed because the disk (or quota) is full: exit 1, kind ``disk``; the files written before are
    intact (every write is atomic)."""

    kind = "disk"
    exit_code = 1
