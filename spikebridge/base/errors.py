"""The error contract shared by every layer (hardware is the bottom layer, so it lives here).

Every rejection of user input raises an ``InputError`` subclass that names the file,
the place inside it (node, tensor, dataset path) and the rule that was broken.
Backend failures (Lava worker crash, timeout) raise ``BackendError``. Anything else
escaping the library is a bug.

CLI exit codes: 0 ok; 1 internal error; 2 usage; 3 input rejected; 4 backend failure
or timeout; 130 interrupted.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_BACKEND = 4
EXIT_INTERRUPTED = 130


class SpikebridgeError(Exception):
    exit_code = EXIT_INTERNAL


class InputError(SpikebridgeError):
    """User input was rejected. ``str()`` is the one-line message the CLI prints."""

    exit_code = EXIT_INPUT

    def __init__(self, rule: str, file: str | None = None, place: str | None = None):
        self.rule = rule
        self.file = None if file is None else str(file)
        self.place = place
        where = ""
        if self.file:
            where = self.file
        if place:
            where = f"{where}: {place}" if where else place
        msg = f"{where}: {rule}" if where else rule
        super().__init__(" ".join(msg.split()))  # always one line


class GraphError(InputError):
    """A NIR graph (file or object) breaks a structural or semantic rule."""


class UnsupportedError(InputError):
    """A valid input uses something a backend cannot run (named, with every other problem)."""


class CheckpointError(InputError):
    """A checkpoint (weights + model.json) is missing, malformed or unsafe."""


class DatasetError(InputError):
    """A dataset or input array is missing, malformed or of the wrong shape."""


class ResourceError(InputError):
    """A request would not fit the declared memory or size limits."""


class OutputError(InputError):
    """An output location cannot be written: read-only, not a directory, full, over a
    size limit, or locked by another run (exit 3: the user chooses where outputs go)."""


class BackendError(SpikebridgeError):
    """A backend failed (worker crash, timeout, missing environment)."""

    exit_code = EXIT_BACKEND
