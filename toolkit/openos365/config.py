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

from .engine.base import check_ref
from .errors import UserError, shown

FIRMWARES = ("bios", "uefi", "both")
SECURE_BOOT = ("auto", "on", "off")
COMPRESSIONS = ("zstd", "xz", "gzip", "none")
ROOTFS_TYPES = ("squashfs", "ext4", "erofs")
WSL_FORMATS = ("tar.gz", "wsl")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_RECIPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PATH_PART = r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
_IMAGE_RE = re.compile(rf"^(?:[A-Za-z0-9.-]+(?::\d+)?/)?{_PATH_PART}(?:/{_PATH_PART})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_BUILD_ARG_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Kernel parameters need no more than this; a quote, ';', '$' or a newline could end the GRUB menu entry or
# the iPXE line the command line is written into and start one of the user's choosing.
_CMDLINE_RE = re.compile(r"[A-Za-z0-9 _.,:=/+@%~-]*")
CMDLINE_ALLOWED = "letters, digits, space and _ . , : = / + @ % ~ -"


def parse_size(text: str | int, *, where: str) -> int:
    """'4G', '512M', '1.5GiB', 1073741824 -> bytes (binary units)."""
    match = None if isinstance(text, bool) else _SIZE_RE.match(str(text))
    if not match:
        raise UserError(f"{where}: {text!r} is not a size", hint="write it like 4G, 512M or 2GiB")
    number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * 1024 ** "BKMGT".index(unit or "B"))
    if size < 1:
        raise UserError(f"{where}: {text!r} is not more than 0 bytes", hint="write it like 4G, 512M or 2GiB")
    return size


def artifact_name_from(text: str) -> str:
    """A valid artifact name (see --name) made from an archive's file name or an image reference.

    Such names are not chosen for this purpose ('My Image', 'Debian_12'); rather than refuse them, they are
    lower-cased and anything else invalid becomes '-', with a note saying how to choose another.
    """
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    name = re.sub(r"^[^a-z0-9]+", "", name) or "image"
    if name != text:
        from . import log

        log.info(f"artifact name '{name}' (made from {text!r}); pass --name to choose another")
    return name


@dataclass(frozen=True)
class ExportOptions:
    """Options an exporter may use. layer.yaml `export:` gives defaults; CLI flags override them."""

    size: int | None = None              # disk size in bytes; None = content + headroom
    firmware: str = "both"               # bios | uefi | both
    secure_boot: str = "auto"            # UEFI via the image's signed shim + GRUB: auto (when it has them) | on | off
    kernel_cmdline: str = ""             # appended to the generated cmdline
    hostname: str | None = None
    user: tuple[str, ...] = ()           # NAME[:GROUP,...]: users created in the image, with sudo rights
    ssh_key: tuple[str, ...] = ()        # public key files: the Nth for the Nth user (root's when no user)
    password_file: str | None = None     # its first line: the users' (or root's) password, hashed on the host
    timezone: str | None = None          # e.g. Europe/Berlin (the image's /usr/share/zoneinfo)
    locale: str | None = None            # LANG, e.g. C.UTF-8 or a locale the image has generated
    keymap: str | None = None            # console keymap (and X layout where the image has it), e.g. de
    copy: tuple[str, ...] = ()           # SRC:DEST host files or directories copied into the image
    compression: str | None = None       # None: the exporter's default (zstd for ISO/KIS, none for disks)
    rootfs: str = "squashfs"             # KIS root filesystem type
    label: str = "OPENOS365"             # ISO volume label
    publisher: str = "openos365"
    wsl_format: str = "tar.gz"
    unattended: bool = False             # install ISO: install without asking (an ambiguous target is still refused)
    name: str | None = None              # base name of the artifacts; default: the layer/image name

    def merged(self, overrides: dict[str, Any]) -> ExportOptions:
        clean = {k: _as_field(k, v) for k, v in overrides.items() if v not in (None, [], ())}
        return validate_export(dataclasses.replace(self, **clean), where="command line")


def _as_field(key: str, value: Any) -> Any:
    """A list or a lone string for a tuple option (--user alice, user: [a, b]) as the tuple it is held as."""
    known = ExportOptions.__dataclass_fields__.get(key)
    if known is not None and isinstance(known.default, tuple):
        return (value,) if isinstance(value, str) else tuple(value)
    return value


def validate_export(opts: ExportOptions, *, where: str) -> ExportOptions:
    def bad(key: str, value: object, allowed: tuple[str, ...]) -> UserError:
        return UserError(f"{where}: export.{key} is {value!r}", hint=f"use one of: {', '.join(allowed)}")

    if opts.firmware not in FIRMWARES:
        raise bad("firmware", opts.firmware, FIRMWARES)
    if opts.secure_boot not in SECURE_BOOT:
        raise bad("secure_boot", opts.secure_boot, SECURE_BOOT)
    if opts.compression is not None and opts.compression not in COMPRESSIONS:
        raise bad("compression", opts.compression, COMPRESSIONS)
    if opts.rootfs not in ROOTFS_TYPES:
        raise bad("rootfs", opts.rootfs, ROOTFS_TYPES)
    if opts.wsl_format not in WSL_FORMATS:
        raise bad("wsl_format", opts.wsl_format, WSL_FORMATS)
    if opts.name is not None and not _NAME_RE.match(opts.name):
        raise UserError(f"{where}: export.name {opts.name!r} is not a valid artifact name",
                        hint="use lower-case letters, digits, '.', '_' and '-' (no '/')")
    if opts.hostname is not None and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9-]{0,62}", opts.hostname):
        raise UserError(f"{where}: export.hostname {opts.hostname!r} is not a valid host name",
                        hint="use letters, digits and '-', at most 63 characters")
    _check_customization(opts, where)
    if len(opts.label) > 32 or not re.fullmatch(r"[A-Z0-9_]+", opts.label):
        raise UserError(f"{where}: export.label {opts.label!r} is not a valid volume label",
                        hint="use at most 32 upper-case letters, digits and '_'")
    _check_cmdline(opts.kernel_cmdline, where)
    return opts


def _check_customization(opts: ExportOptions, where: str) -> None:
    from . import customize

    customize.users_from(opts, where=where)
    for key, pattern, example in (("timezone", customize.TIMEZONE_RE, "Europe/Berlin"),
                                  ("locale", customize.LOCALE_RE, "C.UTF-8 or de_DE.UTF-8"),
                                  ("keymap", customize.KEYMAP_RE, "de or de-nodeadkeys")):
        value = getattr(opts, key)
        if value is not None and not pattern.fullmatch(value):
            raise UserError(f"{where}: export.{key} {value!r} is not valid", hint=f"write it like {example}")
    for text in opts.copy:
        customize.parse_copy(text, where=where)


def _check_cmdline(cmdline: str, where: str) -> None:
    if not _CMDLINE_RE.fullmatch(cmdline):
        bad = sorted({c for c in cmdline if not _CMDLINE_RE.fullmatch(c)})
        raise UserError(f"{where}: export.kernel_cmdline contains {', '.join(map(repr, bad))}, which could break "
                        "out of the boot loader entry it is written into",
                        hint=f"kernel parameters may use {CMDLINE_ALLOWED}")


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
_LAYER_NEEDS = "a layer.yaml needs 'parent: LAYER' (a layer beside it) or 'from: IMAGE' (an image reference)"
_TYPE_HINTS = {
    str: "write one value (quote it if YAML reads it as something else: key: 'yes')",
    list: "write a list: key: [a, b]",
    dict: "write a mapping: indented 'name: value' lines under the key",
}


def load_yaml_mapping(path: Path, *, needs: str) -> dict[str, Any]:
    """The mapping in a YAML file. A syntax error says file:line:column; an empty file says what it needs."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(path, exc) from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{shown(path)}: not valid YAML: {exc}", hint="fix the YAML syntax") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{shown(path)}: not UTF-8 text", hint="save it as UTF-8 YAML") from exc
    except OSError as exc:
        raise UserError(f"{shown(path)}: cannot be read: {exc.strerror}",
                        hint="check that it is a file you may read") from exc
    if data is None:
        raise UserError(f"{shown(path)}: is empty (or only comments)", hint=needs)
    if not isinstance(data, dict):
        raise UserError(f"{shown(path)}: must be a mapping of keys to values, not {type(data).__name__}",
                        hint=needs)
    return data


def _syntax_error(path: Path, exc: yaml.MarkedYAMLError) -> UserError:
    mark = exc.problem_mark or exc.context_mark
    where = f"{shown(path)}:{mark.line + 1}:{mark.column + 1}" if mark else shown(path)
    what = exc.problem or exc.context or "syntax error"
    if exc.problem and exc.context and exc.context_mark:
        what += f" ({exc.context} that starts at {exc.context_mark.line + 1}:{exc.context_mark.column + 1})"
    return UserError(f"{where}: not valid YAML: {' '.join(what.split())}",
                     hint="fix the syntax there: indentation, a missing ':', or an unclosed quote or bracket")


def _unknown(path: Path, data: dict[str, Any], known: set[str], prefix: str = "") -> None:
    for key in data:
        if key not in known:
            raise UserError(f"{shown(path)}: unknown key '{prefix}{key}'",
                            hint=f"known keys here: {', '.join(sorted(known))}")


def _typed(path: Path, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """value when it has the type key needs. YAML's true/false never pass for a number or a string."""
    kinds = (kind,) if isinstance(kind, type) else kind
    if value is None:
        raise UserError(f"{shown(path)}: '{key}' has no value", hint="give it a value or remove the key")
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise UserError(f"{shown(path)}: '{key}' must be a {names}, not {type(value).__name__} ({value!r})",
                        hint=_TYPE_HINTS.get(kinds[0], "see docs/layers.md"))
    return value


def _mapping(path: Path, data: dict[str, Any], key: str) -> dict[Any, Any]:
    value = data.get(key)
    return {} if value is None else _typed(path, key, value, dict)


def _matching(path: Path, data: dict[str, Any], key: str, pattern: re.Pattern[str], hint: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not pattern.match(_typed(path, key, value, str)):
        raise UserError(f"{shown(path)}: {key}: {value!r} is not valid", hint=hint)
    return value


def export_options_from(data: dict[str, Any], path: Path, base: ExportOptions | None = None) -> ExportOptions:
    values = export_values_from(data, path, prefix="export.")
    return validate_export(dataclasses.replace(base or ExportOptions(), **values), where=shown(path))


def export_values_from(data: dict[str, Any], path: Path, *, prefix: str) -> dict[str, Any]:
    """Export options from a YAML mapping, typed as ExportOptions holds them: unknown keys named, sizes
    parsed, switches true/false, everything else one value."""
    known = {f.name: f for f in fields(ExportOptions)}
    _unknown(path, data, set(known), prefix=prefix)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "size":
            values[key] = parse_size(_typed(path, f"{prefix}size", value, (str, int)),
                                     where=f"{shown(path)}: {prefix}size")
        elif isinstance(known[key].default, bool):
            values[key] = _typed(path, f"{prefix}{key}", value, bool)
        elif isinstance(known[key].default, tuple):
            items = [value] if isinstance(value, str) else _typed(path, f"{prefix}{key}", value, list)
            values[key] = tuple(_beside(path, key, str(_typed(path, f"{prefix}{key}[{n}]", item, str)))
                                for n, item in enumerate(items))
        elif key in _HOST_FILE_KEYS:
            values[key] = _beside(path, key, _typed(path, f"{prefix}{key}", value, str))
        else:
            values[key] = str(_typed(path, f"{prefix}{key}", value, (str, int, float)))
    return values


_HOST_FILE_KEYS = {"ssh_key", "password_file", "copy"}


def _beside(path: Path, key: str, value: str) -> str:
    """A relative host path in a YAML file means one beside that file (for copy: the part before ':')."""
    if key not in _HOST_FILE_KEYS:
        return value
    source, sep, dest = value.rpartition(":") if key == "copy" else (value, "", "")
    if key == "copy" and not sep:
        return value     # validate_export says what is wrong with it
    resolved = source if Path(source).is_absolute() else str(path.parent / source)
    return f"{resolved}{sep}{dest}"


@dataclass(frozen=True)
class ExportConfig:
    """An export config (`openos365 export -c release.yaml`): one source, several formats, each with its own
    options on top of `defaults` (which sit on top of the layer's `export:`)."""

    path: Path
    source: str | None
    output: Path | None
    defaults: dict[str, Any]
    formats: dict[str, dict[str, Any]]

    def overrides(self, fmt: str) -> dict[str, Any]:
        return {**self.defaults, **self.formats.get(fmt, {})}


_CONFIG_KEYS = {"source", "output", "defaults", "formats"}
_CONFIG_NEEDS = ("an export config needs 'formats:', a mapping of output formats to their options "
                 "(see docs/release.example.yaml)")


def load_export_config(path: Path, known_formats: list[str]) -> ExportConfig:
    data = load_yaml_mapping(path, needs=_CONFIG_NEEDS)
    _unknown(path, data, _CONFIG_KEYS)
    formats_data = _mapping(path, data, "formats")
    if not formats_data:
        raise UserError(f"{shown(path)}: 'formats' lists no format", hint=_CONFIG_NEEDS)
    formats: dict[str, dict[str, Any]] = {}
    for fmt, options in formats_data.items():
        if fmt not in known_formats:
            raise UserError(f"{shown(path)}: formats: unknown format '{fmt}'",
                            hint=f"use some of: {', '.join(known_formats)}")
        mapping = {} if options is None else _typed(path, f"formats.{fmt}", options, dict)
        formats[fmt] = export_values_from(mapping, path, prefix=f"formats.{fmt}.")
    source = data.get("source")
    output = data.get("output")
    return ExportConfig(
        path=path,
        source=None if source is None else _typed(path, "source", source, str),
        output=None if output is None else (path.parent / _typed(path, "output", output, str)),
        defaults=export_values_from(_mapping(path, data, "defaults"), path, prefix="defaults."),
        formats=formats)


def _base_image(path: Path, data: dict[str, Any]) -> str | None:
    value = data.get("from")
    return None if value is None else check_ref(_typed(path, "from", value, str), where=f"{shown(path)}: from:")


def _tags(path: Path, data: dict[str, Any]) -> tuple[str, ...]:
    tags = data.get("tags")
    if tags is None:
        return ("latest",)
    tags = _typed(path, "tags", [tags] if isinstance(tags, str) else tags, list)
    for number, tag in enumerate(tags):
        if not _TAG_RE.match(_typed(path, f"tags[{number}]", tag, str)):
            raise UserError(f"{shown(path)}: tags[{number}]: {tag!r} is not a valid tag",
                            hint="a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'")
    return tuple(tags) or ("latest",)


def _build_args(path: Path, data: dict[str, Any]) -> dict[str, str]:
    args = _mapping(path, data, "build_args")
    for key, value in args.items():
        if not isinstance(key, str) or not _BUILD_ARG_RE.match(key):
            raise UserError(f"{shown(path)}: build_args: {key!r} is not a valid ARG name",
                            hint="use letters, digits and '_', not starting with a digit")
        if key == "PARENT":
            raise UserError(f"{shown(path)}: build_args.PARENT is set by openos365 (the parent layer's image)",
                            hint="give the build argument another name")
        _typed(path, f"build_args.{key}", value, (str, int, float))
    return {key: str(value) for key, value in args.items()}


def load_layer(directory: Path) -> LayerConfig:
    directory = directory.resolve()
    name = directory.name
    path = directory / "layer.yaml"
    if not path.is_file():
        raise UserError(f"{shown(directory)}: no layer.yaml", hint="a layer is a directory with a Containerfile "
                        "and a layer.yaml (see docs/layers.md)")
    if not (directory / "Containerfile").is_file():
        raise UserError(f"{shown(directory)}: no Containerfile", hint="add layers/<name>/Containerfile")
    if not _NAME_RE.match(name):
        raise UserError(f"{shown(directory)}: layer name '{name}' is not valid",
                        hint="use lower-case letters, digits, '.', '_' and '-'")
    data = load_yaml_mapping(path, needs=_LAYER_NEEDS)
    _unknown(path, data, _LAYER_KEYS)
    parent = _matching(path, data, "parent", _NAME_RE, hint="name a layer directory beside this one, e.g. "
                       "'parent: base' (lower-case letters, digits, '.', '_' and '-')")
    base_image = _base_image(path, data)
    if (parent is None) == (base_image is None):
        raise UserError(f"{shown(path)}: set exactly one of 'parent' (a layer) or 'from' (an image reference)",
                        hint=_LAYER_NEEDS)
    image = data.get("image") or f"localhost/openos365/{name}"
    if not _IMAGE_RE.match(_typed(path, "image", image, str)):
        raise UserError(f"{shown(path)}: image: {image!r} is not a valid image name",
                        hint="write a name without a tag, like localhost/openos365/NAME (tags go in 'tags:')")
    description = data.get("description")
    return LayerConfig(
        name=name,
        directory=directory,
        parent=parent,
        base_image=base_image,
        bootstrap=_matching(path, data, "bootstrap", _RECIPE_RE,
                            hint="name a recipe directory under Containerfiles/, e.g. 'bootstrap: debian-trixie'"),
        image=image,
        tags=_tags(path, data),
        build_args=_build_args(path, data),
        description="" if description is None else str(_typed(path, "description", description, (str, int, float))),
        export=export_options_from(_mapping(path, data, "export"), path),
    )
