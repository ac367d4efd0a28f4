"""What every exporter gets and gives."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ExportOptions
from ..sources import Source


@dataclass(frozen=True)
class ExportContext:
    source: Source
    options: ExportOptions
    outdir: Path
    scratch: Path          # private working directory inside the output directory, removed afterwards

    @property
    def name(self) -> str:
        return self.options.name or self.source.name

    def scratch_dir(self, name: str) -> Path:
        path = self.scratch / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


class Exporter(ABC):
    name: str = ""
    description: str = ""
    tools: tuple[str, ...] = ()
    needs_engine: bool = False   # works on the engine's image (save), not on the flattened tree
    customizes: bool = False     # applies the export-time settings (users, time zone, extra files, ...)

    @abstractmethod
    def plan(self, ctx: ExportContext) -> list[str]:
        """The steps, in words, for --dry-run."""

    @abstractmethod
    def export(self, ctx: ExportContext) -> tuple[list[Path], dict[str, Any]]:
        """Write the artifacts; returns their paths and manifest details."""

    def required_tools(self, options: ExportOptions) -> list[str]:
        return list(self.tools)

    def every_tool(self) -> list[str]:
        """What any option of this format may need: doctor's table."""
        return self.required_tools(ExportOptions())

    def validate(self, options: ExportOptions) -> None:
        """Refuse option combinations this format cannot honour, before anything is built."""
        return None
