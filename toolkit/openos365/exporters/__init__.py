"""One module per output format, registered here in one explicit table."""

from __future__ import annotations

from .base import ExportContext, Exporter
from .tree import DirExporter, TarExporter

EXPORTERS: dict[str, Exporter] = {
    "dir": DirExporter(),
    "tar": TarExporter(),
}

__all__ = ["EXPORTERS", "ExportContext", "Exporter"]
