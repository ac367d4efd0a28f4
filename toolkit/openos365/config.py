"""layer.yaml and export options -> frozen dataclasses.

Unknown keys are errors that name the file and the dotted key, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

FIRMWARES = ("bios", "uefi", "both")
COMPRESSIONS = ("zstd", "xz", "gzip", "none")
ROOTFS_TYPES = ("squashfs", "ext4", "erofs")
WSL_FORMATS = ("tar.gz", "wsl")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def parse_size(text: str | int, *, where: str) -> int:
    """'4G', '512M', '1.5GiB', 1073741824 -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise UserError(f"{where}: '{text}' is not a size", hint="write it like 4G, 512M or 2GiB")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** "BKMGT".index(unit or "B"))


@dataclass(frozen=True)
class ExportOptions:
    """Options an exporter may use. layer.yaml `export:` gives defaults; CLI flags override them."""

    size: int | None = None              # disk size in bytes; None = content + headroom
    firmware: str = "both"               # bios | uefi | both
    kernel_cmdline: str = ""             # appended to the generated cmdline
    hostname: str | None = None
    user: str | None = None              # a user created in the image, with sudo rights
    ssh_key: str | None = None           # path of a public key file for `user` (or root)
    compression: str | None = None       # None: the exporter's default (zstd for ISO/KIS, none for disks)
    rootfs: str = "squashfs"             # KIS root filesystem type
    label: str = "OPENOS365"             # ISO volume label
    publisher: str = "openos365"
    wsl_format: str = "tar.gz"
    name: str | None = None              # base name of the artifacts; default: the layer/image name

    def merged(self, overrides: dict[str, Any]) -> ExportOptions:
        clean = {k: v for k, v in overrides.items() if v is not None}
        return validate_export(dataclasses.replace(self, **clean), where="command line")


def validate_export(opts: ExportOptions, *, where: str) -> ExportOptions:
    def bad(key: str, value: object, allowed: tuple[str, ...]) -> UserError:
        return UserError(f"{where}: export.{key} is '{value}'", hint=f"use one of: {', '.join(allowed)}")

    if opts.firmware not in FIRMWARES:
        raise bad("firmware", opts.firmware, FIRMWARES)
    if opts.compression is not None and opts.compression not in COMPRESSIONS:
        raise bad("compression", opts.compression, COMPRESSIONS)
    if opts.rootfs not in ROOTFS_TYPES:
        raise bad("rootfs", opts.rootfs, ROOTFS_TYPES)
    if opts.wsl_format not in WSL_FORMATS:
        raise bad("wsl_format", opts.wsl_format, WSL_FORMATS)
    if opts.name is not None and not _NAME_RE.match(opts.name):
        raise UserError(f"{where}: export.name '{opts.name}' is not a valid artifact name",
                        hint="use lower-case letters, digits, '.', '_' and '-' (no '/')")
    if opts.hostname is not None and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9-]{0,62}", opts.hostname):
        raise UserError(f"{where}: export.hostname '{opts.hostname}' is not a valid host name",
                        hint="use letters, digits and '-', at most 63 characters")
    if opts.user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", opts.user):
        raise UserError(f"{where}: export.user '{opts.user}' is not a valid user name",
                        hint="use lower-case letters, digits, '_' and '-', starting with a letter")
    if len(opts.label) > 32 or not re.fullmatch(r"[A-Z0-9_]+", opts.label):
        raise UserError(f"{where}: export.label '{opts.label}' is not a valid volume label",
                        hint="use at most 32 upper-case letters, digits and '_'")
    return opts


@dataclass(frozen=True)
class LayerConfig:
    name: str
    directory: Path
    parent: str | None = None           # another layer under the same layers/ directory
    base_image: str | None = None       # `from:` any image reference, for a layer without parent
    bootstrap: str | None = None        # recipe in Containerfiles/ that makes `from:` when missing
    image: str = ""                     # image name without tag
    tags: tuple[str, ...] = ("latest",)
    build_args: dict[str, str] = field(default_factory=dict)
    description: str = ""
    export: ExportOptions = field(default_factory=ExportOptions)

    @property
    def containerfile(self) -> Path:
        return self.directory / "Containerfile"

    @property
    def ref(self) -> str:
        return f"{self.image}:{self.tags[0]}"


_LAYER_KEYS = {"parent", "from", "bootstrap", "image", "tags", "build_args", "description", "export"}


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}", hint="fix the syntax error it points at") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of keys to values, not {type(data).__name__}")
    return data


def _unknown(path: Path, data: dict[str, Any], known: set[str], prefix: str = "") -> None:
    for key in data:
        if key not in known:
            raise UserError(f"{path}: unknown key '{prefix}{key}'",
                            hint=f"known keys here: {', '.join(sorted(known))}")


def _typed(path: Path, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"{path}: '{key}' must be a {names}, not {type(value).__name__} ({value!r})")
    return value


def export_options_from(data: dict[str, Any], path: Path, base: ExportOptions | None = None) -> ExportOptions:
    known = {f.name for f in fields(ExportOptions)}
    _unknown(path, data, known, prefix="export.")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "size":
            values[key] = parse_size(value, where=f"{path}: export.size")
        else:
            values[key] = str(_typed(path, f"export.{key}", value, (str, int, float)))
    return validate_export(dataclasses.replace(base or ExportOptions(), **values), where=str(path))


def load_layer(directory: Path) -> LayerConfig:
    directory = directory.resolve()
    name = directory.name
    path = directory / "layer.yaml"
    if not path.is_file():
        raise UserError(f"{directory}: no layer.yaml", hint="a layer is a directory with a Containerfile and a "
                        "layer.yaml (see docs/layers.md)")
    if not (directory / "Containerfile").is_file():
        raise UserError(f"{directory}: no Containerfile", hint="add layers/<name>/Containerfile")
    if not _NAME_RE.match(name):
        raise UserError(f"{directory}: layer name '{name}' is not valid",
                        hint="use lower-case letters, digits, '.', '_' and '-'")
    data = _load_yaml(path)
    _unknown(path, data, _LAYER_KEYS)
    parent = data.get("parent")
    base_image = data.get("from")
    if parent is not None:
        _typed(path, "parent", parent, str)
    if base_image is not None:
        _typed(path, "from", base_image, str)
    if (parent is None) == (base_image is None):
        raise UserError(f"{path}: set exactly one of 'parent' (a layer) or 'from' (an image reference)")
    tags = data.get("tags", ["latest"])
    if isinstance(tags, str):
        tags = [tags]
    _typed(path, "tags", tags, list)
    build_args = _typed(path, "build_args", data.get("build_args", {}) or {}, dict)
    export = _typed(path, "export", data.get("export", {}) or {}, dict)
    return LayerConfig(
        name=name,
        directory=directory,
        parent=parent,
        base_image=base_image,
        bootstrap=_typed(path, "bootstrap", data["bootstrap"], str) if "bootstrap" in data else None,
        image=str(data.get("image") or f"localhost/openos365/{name}"),
        tags=tuple(str(t) for t in tags) or ("latest",),
        build_args={str(k): str(v) for k, v in build_args.items()},
        description=str(data.get("description", "")),
        export=export_options_from(export, path),
    )
