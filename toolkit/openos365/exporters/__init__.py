"""One module per output format, registered here in one explicit table."""

from __future__ import annotations

from .base import ExportContext, Exporter
from .disk import DISK_FORMATS, DiskExporter
from .tree import DirExporter, TarExporter

EXPORTERS: dict[str, Exporter] = {
    "dir": DirExporter(),
    "tar": TarExporter(),
    **{fmt: DiskExporter(fmt) for fmt in DISK_FORMATS},
}

__all__ = ["EXPORTERS", "ExportContext", "Exporter"]
