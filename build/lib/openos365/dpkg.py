"""dpkg's status database: what a Debian-family image has installed (read through imagetree)."""

from __future__ import annotations

import re

from .imagetree import ImageTree

STATUS = "var/lib/dpkg/status"
MAX_STATUS = 64 << 20   # a large desktop image's status file is a few MiB


def read_status(tree: ImageTree) -> str:
    return tree.read_text(STATUS, limit=MAX_STATUS)


def stanzas(status: str) -> list[str]:
    return [s.strip("\n") for s in re.split(r"\n[ \t]*\n", status) if s.strip()]


def field(stanza: str, name: str) -> str:
    found = re.search(rf"^{name}: *(.*)$", stanza, re.MULTILINE)
    return found.group(1).strip() if found else ""


def is_installed(stanza: str) -> bool:
    return field(stanza, "Status").endswith(" installed")


def installed_packages(tree: ImageTree) -> list[str]:
    """name=version of the installed packages; [] for an image without dpkg."""
    return sorted(f"{field(s, 'Package')}={field(s, 'Version')}" for s in stanzas(read_status(tree))
                  if field(s, "Package") and is_installed(s))


def packages_matching(status: str, pattern: re.Pattern[str]) -> list[str]:
    """Installed packages whose names match."""
    return sorted(field(s, "Package") for s in stanzas(status)
                  if pattern.match(field(s, "Package")) and is_installed(s))


def status_without(status: str, names: list[str]) -> str:
    kept = [s for s in stanzas(status) if field(s, "Package") not in names]
    return "".join(f"{s}\n\n" for s in kept)
