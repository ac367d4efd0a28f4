"""The few domain errors. cli.py turns them into messages and exit codes; nothing else exits."""

from __future__ import annotations

from pathlib import Path


def shown(path: Path) -> str:
    """A path in a message as the user would type it: relative to the current directory when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


class OpenOSError(Exception):
    """Base class: a failure the user can act on. `hint` says what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UserError(OpenOSError):
    """Bad input: a file, a key, an option or an image reference that is wrong."""

    exit_code = 2


class MissingToolError(OpenOSError):
    """A host tool an operation needs is not installed."""

    exit_code = 3


class CommandError(OpenOSError):
    """A process failed. Carries the argv, the exit status and the last lines of output."""

    def __init__(self, argv: list[str], returncode: int, tail: list[str], step: str | None = None,
                 hint: str | None = None, message: str | None = None):
        """`message` replaces the default "ARGV failed ..." where the caller can say it in the user's terms
        (the layer and the Containerfile step rather than a long build command line)."""
        import shlex

        where = f" during '{step}'" if step else ""
        super().__init__(message or f"{shlex.join(argv)!s} failed with exit status {returncode}{where}", hint)
        self.argv = argv
        self.returncode = returncode
        self.tail = tail
        self.step = step


class BootTestError(OpenOSError):
    """A booted artifact did not report success."""

    exit_code = 4
