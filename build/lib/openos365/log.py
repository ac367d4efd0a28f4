"""Console output: nested timed steps, verbose command echo, optional JSON events.

Everything a user sees goes through here, on stderr, so stdout stays clean for data (`--json`).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape

# soft_wrap: never break lines; logs are piped and grepped as often as they are read on a terminal
console = Console(stderr=True, highlight=False, soft_wrap=True)

_state = {"verbose": False, "json": False, "depth": 0}


def configure(verbose: bool = False, json_events: bool = False) -> None:
    _state["verbose"] = verbose
    _state["json"] = json_events


def is_verbose() -> bool:
    return bool(_state["verbose"])


def _event(kind: str, **fields: object) -> None:
    if _state["json"]:
        print(json.dumps({"event": kind, **fields}), file=sys.stderr, flush=True)


def _indent() -> str:
    return "  " * int(_state["depth"])


def info(message: str) -> None:
    _event("info", message=message)
    if not _state["json"]:
        console.print(f"{_indent()}{escape(message)}")


def note(message: str) -> None:
    """Detail shown with --verbose only."""
    _event("note", message=message)
    if _state["verbose"] and not _state["json"]:
        console.print(f"{_indent()}[dim]{escape(message)}[/dim]")


def warn(message: str) -> None:
    _event("warning", message=message)
    if not _state["json"]:
        console.print(f"{_indent()}[yellow]warning:[/yellow] {escape(message)}")


def command(argv_text: str) -> None:
    note(f"+ {argv_text}")


def output_line(line: str) -> None:
    if _state["verbose"] and not _state["json"]:
        console.out(f"{_indent()}  {line}", highlight=False, style="dim")


def done(message: str) -> None:
    _event("done", message=message)
    if not _state["json"]:
        console.print(f"[bold green]{escape(message)}[/bold green]")


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """A named, timed step. Steps nest; a failure names the step it happened in."""
    start = time.monotonic()
    _event("step-start", step=title)
    if not _state["json"]:
        console.print(f"{_indent()}[bold cyan]>[/bold cyan] {escape(title)}")
    _state["depth"] = int(_state["depth"]) + 1
    try:
        yield
    except BaseException:
        _event("step-failed", step=title, seconds=round(time.monotonic() - start, 2))
        raise
    finally:
        _state["depth"] = int(_state["depth"]) - 1
    seconds = time.monotonic() - start
    _event("step-done", step=title, seconds=round(seconds, 2))
    if not _state["json"] and seconds >= 1:
        console.print(f"{_indent()}  [dim]{escape(title)}: {seconds:.1f}s[/dim]")


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
