"""The one place that starts processes.

run() logs `+ argv`, streams output (shown with --verbose), keeps the last lines so a failure can show
them, and raises CommandError naming the step. Nothing else in openos365 calls subprocess.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import log
from .errors import CommandError, MissingToolError

TAIL_LINES = 25


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    tail: list[str]


def _resolved(argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """argv with its program found the way `which` finds it: a normal user's PATH often lacks /usr/sbin,
    where sfdisk, mkfs.* and friends live (and where tools.require found them)."""
    args = [os.fspath(a) for a in argv]
    if args and "/" not in args[0]:
        args[0] = which(args[0]) or args[0]
    return args


def _env(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    if not extra:
        return None
    env = dict(os.environ)
    env.update(extra)
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    step: str | None = None,
    capture: bool = False,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input_text: str | None = None,
    stdout_file: IO[bytes] | None = None,
    hint: str | None = None,
    on_line: Callable[[str], None] | None = None,
    passthrough: bool = False,
    timeout: float | None = None,
) -> Result:
    """Run argv. With capture=True stdout is returned (stderr still streams to the tail).

    stdout_file sends stdout to an open binary file instead (for `podman save`-style producers);
    passthrough=True lets the process write to our own stdout and stderr (openos365 run again elsewhere).
    timeout (with capture=True): a process still running then is killed, and that is a CommandError.
    """
    args = _resolved(argv)
    log.command(shlex.join(args))
    if passthrough:
        try:
            code = subprocess.call(args, env=_env(env), cwd=cwd)
        except FileNotFoundError as exc:
            raise MissingToolError(f"'{args[0]}' is not installed", hint="run `openos365 doctor`") from exc
        if check and code != 0:
            raise CommandError(args, code, [], step=step, hint=hint)
        return Result(args, code, "", [])
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    captured: list[str] = []
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=stdout_file if stdout_file is not None else subprocess.PIPE,
            stderr=subprocess.PIPE if capture or stdout_file is not None else subprocess.STDOUT,
            env=_env(env),
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        raise MissingToolError(f"'{args[0]}' is not installed", hint="run `openos365 doctor` to see which "
                               "package provides it") from exc
    data = input_text.encode() if input_text is not None else None
    if capture:
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise CommandError(args, -9, [], step=step, hint=hint or f"it ran longer than {timeout:.0f}s") from None
        captured.append(out.decode(errors="replace"))
        for line in err.decode(errors="replace").splitlines():
            tail.append(line)
            log.output_line(line)
    else:
        if data is not None:
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.close()
        stream = proc.stderr if stdout_file is not None else proc.stdout
        assert stream is not None
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            log.output_line(line)
            if on_line is not None:
                on_line(line)
        proc.wait()
    result = Result(args, proc.returncode, "".join(captured), list(tail))
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, list(tail), step=step, hint=hint)
    return result


def output(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> str:
    """Run and return stdout, stripped."""
    return run(argv, capture=True, **kwargs).stdout.strip()  # type: ignore[arg-type]


def succeeds(argv: Sequence[str | os.PathLike[str]]) -> bool:
    """True when argv exits 0. Its output is discarded (kept in the tail for verbose logs)."""
    try:
        return run(argv, capture=True, check=False).returncode == 0
    except MissingToolError:
        return False


@contextmanager
def pipe_through(argv: Sequence[str | os.PathLike[str]], source: IO[bytes], *, step: str | None = None,
                 hint: str | None = None) -> Iterator[IO[bytes]]:
    """Feed `source` to argv's stdin (from a thread) and yield its stdout: a filter such as `zstd -dc`
    applied to a stream that is not a file. A non-zero exit raises CommandError with its stderr tail."""
    args = _resolved(argv)
    log.command(shlex.join(args))
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise MissingToolError(f"'{args[0]}' is not installed", hint="run `openos365 doctor`") from exc
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin = proc.stdin

    def feed() -> None:
        try:
            shutil.copyfileobj(source, stdin, 1 << 20)
        except (BrokenPipeError, ValueError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    failed = False
    try:
        yield proc.stdout
    except BaseException:
        failed = True
        proc.kill()
        raise
    finally:
        if not failed:
            proc.stdout.read()
        err = proc.stderr.read().decode(errors="replace").splitlines()
        proc.wait()
        feeder.join()
    if proc.returncode != 0:
        raise CommandError(args, proc.returncode, err[-TAIL_LINES:], step=step, hint=hint)


def spawn(argv: Sequence[str | os.PathLike[str]], *, stdout: int | IO[bytes] = subprocess.PIPE,
          stderr: int | IO[bytes] = subprocess.STDOUT) -> subprocess.Popen[bytes]:
    """Start argv and return at once (a VM under test): the caller watches it, then kills or waits for it."""
    args = _resolved(argv)
    log.command(shlex.join(args))
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    except FileNotFoundError as exc:
        raise MissingToolError(f"'{args[0]}' is not installed", hint="run `openos365 doctor`") from exc


# The same tool under another distribution's name: Fedora and openSUSE ship GRUB's tools as grub2-*.
TOOL_ALIASES = {"grub-mkimage": ("grub2-mkimage",)}


def which(tool: str) -> str | None:
    """Find a tool on PATH, also in the sbin directories a non-root PATH may lack, also by its other names."""
    for name in (tool, *TOOL_ALIASES.get(tool, ())):
        found = shutil.which(name)
        if found:
            return found
        for directory in ("/usr/sbin", "/sbin"):
            candidate = Path(directory) / name
            if candidate.exists():
                return str(candidate)
    return None
