"""One module per output format, registered here in one explicit table."""

from __future__ import annotations

from .base import ExportContext, Exporter
from .container import DockerArchiveExporter, OciArchiveExporter
from .disk import DISK_FORMATS, DiskExporter
from .iso import IsoExporter
from .kis import KisExporter
from .tree import DirExporter, TarExporter
from .wsl import WslExporter

EXPORTERS: dict[str, Exporter] = {
    "dir": DirExporter(),
    "tar": TarExporter(),
    **{fmt: DiskExporter(fmt) for fmt in DISK_FORMATS},
    "iso": IsoExporter(),
    "install-iso": IsoExporter(install=True),
    "kis": KisExporter(),
    "docker": DockerArchiveExporter(),
    "oci": OciArchiveExporter(),
    "wsl": WslExporter(),
}

__all__ = ["EXPORTERS", "ExportContext", "Exporter"]
