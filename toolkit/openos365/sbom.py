"""A CycloneDX 1.5 SBOM beside each artifact: the image's dpkg packages, made with cyclonedx-python-lib.

Per package: name, version, architecture, source package (and its version when it differs), a purl
(pkg:deb/<os-release ID>/NAME@VERSION?arch=ARCH&distro=<ID>-<VERSION_ID>) and the license the package
states in Debian's machine-readable /usr/share/doc/NAME/copyright (DEP-5): the `License:` of its `Files: *`
paragraph, as an SPDX expression when it is one or when its DEP-5 short names translate to one (GPL-3+ ->
GPL-3.0-or-later), else as a license name; nothing for a free-form copyright file. What the package stated
is kept in the property openos365:deb:license.

Everything is read through imagetree. The document depends only on the image, the artifact and the export's
epoch (timestamp, serial number), so the same export gives the same bytes.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot5
from cyclonedx.spdx import fixup_id, is_expression
from debian.deb822 import Deb822
from packageurl import PackageURL

from . import __version__, dpkg, log
from .artifacts import atomic_path, sbom_path
from .boot import os_release
from .imagetree import ImageTree, TreeError

MAX_COPYRIGHT = 4 << 20   # the largest Debian copyright files (firmware, kernels) are a few hundred KiB


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    license: str | None      # as the package states it (DEP-5 `Files: *`), None when it does not


@dataclass(frozen=True)
class Subject:
    """What the SBOM describes: an artifact made from an image."""
    artifact: str            # file name, e.g. server.qcow2
    fmt: str
    image_id: str            # sha256:...
    image_ref: str | None
    sha256: str | None       # of the artifact, when it is a file
    epoch: int


# --- what the image has -----------------------------------------------------------------------------------

def read_packages(tree: ImageTree, leave_out: tuple[str, ...] = ()) -> list[Package]:
    """The installed packages of dpkg's status database ([] without one), except those left out."""
    packages = []
    for stanza in dpkg.stanzas(dpkg.read_status(tree)):
        name = dpkg.field(stanza, "Package")
        if not name or not dpkg.is_installed(stanza) or name in leave_out:
            continue
        version = dpkg.field(stanza, "Version")
        source, _, source_version = dpkg.field(stanza, "Source").partition(" ")
        packages.append(Package(name=name, version=version, architecture=dpkg.field(stanza, "Architecture"),
                                source=source or name, source_version=source_version.strip("()") or version,
                                license=stated_license(tree, name)))
    return sorted(packages, key=lambda p: (p.name, p.architecture))


def stated_license(tree: ImageTree, package: str) -> str | None:
    """The `License:` of the `Files: *` paragraph of a DEP-5 copyright file; None when free-form or absent.

    deb822's plain parser, not debian.copyright's round-trip one: that takes 20 ms a file, the whole
    export a few seconds for a few hundred packages."""
    try:
        text = tree.read_text(f"usr/share/doc/{package}/copyright", limit=MAX_COPYRIGHT)
    except TreeError:
        return None
    paragraphs = Deb822.iter_paragraphs(text.splitlines(), use_apt_pkg=False)
    header = next(paragraphs, None)
    if header is None or not ({"Format", "Format-Specification"} & set(header)):
        return None   # free-form: DEP-5 files open with a header paragraph naming their format
    for paragraph in paragraphs:
        if "*" in paragraph.get("Files", "").split():
            synopsis = paragraph.get("License", "").strip().partition("\n")[0].strip()   # the rest: its text
            return synopsis or None
    return None


# --- DEP-5 short names -> SPDX ----------------------------------------------------------------------------

_GNU = re.compile(r"^(A?GPL|LGPL|GFDL)(-NIV)?-(\d+)(?:\.(\d+))?(\+)?$", re.IGNORECASE)
# DEP-5 standard short names whose SPDX identifier is not the same name (case aside); unversioned Artistic
# is Perl's (Debian's common-licenses/Artistic)
_DEP5_NAMES = {"expat": "MIT", "cc0": "CC0-1.0", "artistic": "Artistic-1.0-Perl"}


def spdx_expression(stated: str) -> str | None:
    """An SPDX expression meaning what a DEP-5 `License:` line says, or None when one of its names has no
    SPDX identifier (custom names, `with ... exception`)."""
    groups = [g.strip() for g in stated.split(",")]
    parts = []
    for index, group in enumerate(groups):
        operator, rest = "", group
        if index:
            operator, _, rest = group.partition(" ")
            if operator.lower() not in ("and", "or"):
                return None
        mapped = _names_to_spdx(rest.strip())
        if mapped is None:
            return None
        if len(groups) > 1 and " " in mapped:
            mapped = f"({mapped})"
        parts.append(f"{operator.upper()} {mapped}" if operator else mapped)
    expression = " ".join(parts)
    return expression if expression and is_expression(expression) else None


def _names_to_spdx(text: str) -> str | None:
    words = re.split(r"\s+(or|and)\s+", text, flags=re.IGNORECASE)
    out = []
    for position, word in enumerate(words):
        if position % 2:
            out.append(word.upper())
            continue
        spdx = _spdx_id(word)
        if spdx is None:
            return None
        out.append(spdx)
    return " ".join(out)


def _spdx_id(name: str) -> str | None:
    gnu = _GNU.match(name)
    if gnu:
        family, niv, major, minor, later = gnu.groups()
        variant = "-no-invariants" if niv else ""
        name = f"{family.upper()}-{major}.{minor or 0}{variant}-{'or-later' if later else 'only'}"
    elif name.lower() in _DEP5_NAMES:
        return _DEP5_NAMES[name.lower()]
    return fixup_id(name)


# --- the document ---------------------------------------------------------------------------------------

def distro_of(tree: ImageTree) -> tuple[str, str | None]:
    """(purl namespace, distro qualifier) from os-release: ('debian', 'debian-12')."""
    fields = os_release(tree)
    vendor = fields.get("ID", "").lower() or "debian"
    release = fields.get("VERSION_ID") or fields.get("VERSION_CODENAME")
    return vendor, f"{vendor}-{release}" if release else None


def component(package: Package, vendor: str, distro: str | None) -> Component:
    qualifiers = {"arch": package.architecture, **({"distro": distro} if distro else {})}
    purl = PackageURL(type="deb", namespace=vendor, name=package.name, version=package.version,
                      qualifiers=qualifiers)
    properties = [Property(name="openos365:deb:architecture", value=package.architecture),
                  Property(name="openos365:deb:source", value=package.source)]
    if package.source_version != package.version:
        properties.append(Property(name="openos365:deb:source-version", value=package.source_version))
    licenses = []
    if package.license:
        properties.append(Property(name="openos365:deb:license", value=package.license))
        expression = spdx_expression(package.license)
        licenses.append(LicenseFactory().make_from_string(expression) if expression
                        else LicenseFactory().make_with_name(package.license))
    return Component(type=ComponentType.LIBRARY, name=package.name, version=package.version, purl=purl,
                     bom_ref=purl.to_string(), licenses=licenses, properties=properties)


def document(packages: list[Package], subject: Subject, vendor: str, distro: str | None,
             os_name: str | None = None) -> str:
    """The CycloneDX 1.5 JSON text."""
    root_type = ComponentType.CONTAINER if subject.fmt in ("docker", "oci") else ComponentType.OPERATING_SYSTEM
    properties = [Property(name="openos365:format", value=subject.fmt),
                  Property(name="openos365:image-id", value=subject.image_id),
                  Property(name="openos365:source-date-epoch", value=str(subject.epoch))]
    if subject.image_ref:
        properties.append(Property(name="openos365:image-ref", value=subject.image_ref))
    hashes = [HashType(alg=HashAlgorithm.SHA_256, content=subject.sha256)] if subject.sha256 else []
    root = Component(type=root_type, name=subject.artifact, version=subject.image_id, bom_ref="artifact",
                     description=os_name, hashes=hashes, properties=properties)
    seed = f"{subject.image_id}:{subject.fmt}:{subject.artifact}:{subject.sha256}"
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"openos365:sbom:{seed}"))
    bom.metadata.timestamp = datetime.fromtimestamp(subject.epoch, tz=UTC)
    bom.metadata.component = root
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="openos365",
                                                version=__version__))
    components = [component(p, vendor, distro) for p in packages]
    bom.components.update(components)
    bom.register_dependency(root, components)   # the artifact contains every package
    return JsonV1Dot5(bom).output_as_string(indent=2) + "\n"


def write_sbom(tree: ImageTree | None, artifact: Path, subject: Subject, leave_out: tuple[str, ...] = ()) -> Path:
    """ARTIFACT.cdx.json, written atomically. An image without dpkg's database gets one without components."""
    packages: list[Package] = []
    vendor, distro, os_name = "debian", None, None
    if tree is not None and tree.is_file(dpkg.STATUS):
        packages = read_packages(tree, leave_out)
        vendor, distro = distro_of(tree)
        os_name = os_release(tree).get("PRETTY_NAME")
    else:
        log.warn(f"{sbom_path(artifact).name} lists no packages: the image has no dpkg database "
                 f"(/{dpkg.STATUS}), and dpkg's is the only one openos365 reads")
    target = sbom_path(artifact)
    with atomic_path(target) as temp:
        temp.write_text(document(packages, subject, vendor, distro, os_name))
    return target
