"""The CycloneDX SBOM beside each artifact, on fake trees: dpkg status, DEP-5 and free-form copyright files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from openos365 import sbom
from openos365.artifacts import atomic_path, sbom_path
from openos365.imagetree import ImageTree
from tests.conftest import cli

from .test_trust_boundary import make_layout, tar_bytes

DEP5 = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: {name}\n\n"

STATUS = """\
Package: bash
Essential: yes
Status: install ok installed
Priority: required
Architecture: amd64
Multi-Arch: foreign
Source: bash (5.2.15-2)
Version: 5.2.15-2+b2
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.

Package: libfoo1
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: foo
Version: 1:2.0-1
Description: a library

Package: libfoo1
Status: install ok installed
Architecture: i386
Multi-Arch: same
Source: foo
Version: 1:2.0-1
Description: a library, for the other architecture

Package: perlish
Status: install ok installed
Architecture: all
Version: 3
Description: names DEP-5 short names in an expression

Package: tclish
Status: install ok installed
Architecture: all
Version: 1.0
Description: states a license no SPDX identifier names

Package: oldstyle
Status: install ok installed
Architecture: amd64
Version: 0.9
Description: a free-form copyright file

Package: nodocs
Status: install ok installed
Architecture: amd64
Version: 4
Description: no /usr/share/doc entry at all

Package: fifo
Status: install ok installed
Architecture: amd64
Version: 5
Description: copyright is a fifo (a hostile image): never opened

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1
Description: removed, configuration kept
"""

COPYRIGHT = {
    # Files: debian/* comes first; the `Files: *` paragraph's License is what the package states
    "bash": DEP5.format(name="bash") + "Files: debian/*\nCopyright: Debian\nLicense: GPL-2+\n\n"
            "Files: *\nCopyright: (C) 1987-2022 Free Software Foundation, Inc.\nLicense: GPL-3+\n\n"
            "License: GPL-3+\n This program is free software ...\n",
    "libfoo1": DEP5.format(name="foo") + "Files: *\nCopyright: someone\nLicense: MIT OR Apache-2.0\n",
    "perlish": DEP5.format(name="perlish") + "Files: * lib/*\nCopyright: x\nLicense: GPL-1+ or Artistic, and Expat\n"
               " the licenses' text\n",
    "tclish": DEP5.format(name="tclish") + "Files: *\nCopyright: x\nLicense: Tcl-BSDish\n",
    "oldstyle": "This package was debianized by someone on a Monday.\n\nLicense: GPL version 2 or later, "
                "see /usr/share/common-licenses/GPL-2.\n",
}


def fake_tree(root: Path, status: str = STATUS) -> ImageTree:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(status)
    for package, text in COPYRIGHT.items():
        (root / f"usr/share/doc/{package}").mkdir(parents=True)
        (root / f"usr/share/doc/{package}/copyright").write_text(text)
    (root / "usr/share/doc/fifo").mkdir(parents=True)
    os.mkfifo(root / "usr/share/doc/fifo/copyright")
    return ImageTree(root)


SUBJECT = sbom.Subject(artifact="server.qcow2", fmt="qcow2", image_id="sha256:" + "ab" * 32,
                       image_ref="localhost/openos365/server:latest", sha256="cd" * 32, epoch=1_700_000_000)


def strictly_valid(text: str) -> dict:
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    assert error is None, error
    return json.loads(text)


def written(tmp_path: Path, tree: ImageTree | None, **kwargs) -> dict:
    artifact = tmp_path / "out/server.qcow2"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    path = sbom.write_sbom(tree, artifact, SUBJECT, **kwargs)
    assert path == tmp_path / "out/server.qcow2.cdx.json"
    return strictly_valid(path.read_text())


def by_ref(document: dict) -> dict[str, dict]:
    return {c["bom-ref"]: c for c in document["components"]}


def properties(component: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in component.get("properties", [])}


def test_installed_packages_with_source_architecture_and_stated_license(tmp_path):
    packages = sbom.read_packages(fake_tree(tmp_path / "root"))
    assert [(p.name, p.architecture) for p in packages] == [
        ("bash", "amd64"), ("fifo", "amd64"), ("libfoo1", "amd64"), ("libfoo1", "i386"), ("nodocs", "amd64"),
        ("oldstyle", "amd64"), ("perlish", "all"), ("tclish", "all")]   # not the removed one
    bash = packages[0]
    assert (bash.version, bash.source, bash.source_version, bash.license) == \
        ("5.2.15-2+b2", "bash", "5.2.15-2", "GPL-3+")
    licenses = {p.name: p.license for p in packages}
    assert licenses["oldstyle"] is None and licenses["nodocs"] is None and licenses["fifo"] is None
    assert licenses["perlish"] == "GPL-1+ or Artistic, and Expat"   # the synopsis, not the text below it


def test_the_document_passes_the_strict_cyclonedx_1_5_validator_and_says_what_each_package_states(tmp_path):
    document = written(tmp_path, fake_tree(tmp_path / "root"))
    assert document["specVersion"] == "1.5"
    components = by_ref(document)
    bash = components["pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12"]
    assert (bash["name"], bash["version"]) == ("bash", "5.2.15-2+b2")
    assert bash["licenses"] == [{"license": {"id": "GPL-3.0-or-later"}}]   # DEP-5's GPL-3+
    assert properties(bash) == {"openos365:deb:architecture": "amd64", "openos365:deb:source": "bash",
                                "openos365:deb:source-version": "5.2.15-2", "openos365:deb:license": "GPL-3+"}
    # Multi-Arch: same: one component per architecture, the epoch kept in the version
    for arch in ("amd64", "i386"):
        foo = components[f"pkg:deb/debian/libfoo1@1:2.0-1?arch={arch}&distro=debian-12"]
        assert foo["licenses"] == [{"expression": "MIT OR Apache-2.0"}]    # an SPDX expression as stated
        assert properties(foo)["openos365:deb:source"] == "foo"
        assert "openos365:deb:source-version" not in properties(foo)     # same as the package's
    perlish = components["pkg:deb/debian/perlish@3?arch=all&distro=debian-12"]
    assert perlish["licenses"] == [{"expression": "(GPL-1.0-or-later OR Artistic-1.0-Perl) AND MIT"}]
    tclish = components["pkg:deb/debian/tclish@1.0?arch=all&distro=debian-12"]
    assert tclish["licenses"] == [{"license": {"name": "Tcl-BSDish"}}]    # no SPDX id: a name, as stated
    for unstated in ("oldstyle@0.9", "nodocs@4", "fifo@5"):
        component = components[f"pkg:deb/debian/{unstated}?arch=amd64&distro=debian-12"]
        assert "licenses" not in component and "openos365:deb:license" not in properties(component)


def test_the_metadata_names_the_image_the_artifact_and_openos365(tmp_path):
    metadata = written(tmp_path, fake_tree(tmp_path / "root"))["metadata"]
    assert metadata["timestamp"] == "2023-11-14T22:13:20+00:00"   # the export's epoch, not the clock
    assert metadata["tools"]["components"][0]["name"] == "openos365"
    root = metadata["component"]
    assert (root["name"], root["type"], root["description"]) == \
        ("server.qcow2", "operating-system", "Debian GNU/Linux 12 (bookworm)")
    assert root["hashes"] == [{"alg": "SHA-256", "content": "cd" * 32}]
    assert properties(root) == {"openos365:format": "qcow2", "openos365:image-id": "sha256:" + "ab" * 32,
                                "openos365:image-ref": "localhost/openos365/server:latest",
                                "openos365:source-date-epoch": "1700000000"}


def test_the_same_input_gives_the_same_bytes(tmp_path):
    tree = fake_tree(tmp_path / "root")
    first = sbom.write_sbom(tree, tmp_path / "a/server.qcow2", SUBJECT).read_bytes()
    again = sbom.write_sbom(tree, tmp_path / "b/server.qcow2", SUBJECT).read_bytes()
    assert first == again
    other = sbom.write_sbom(tree, tmp_path / "c/server.qcow2", sbom.Subject(**{**vars(SUBJECT), "sha256": "ef" * 32}))
    assert json.loads(other.read_bytes())["serialNumber"] != json.loads(first)["serialNumber"]


def test_packages_a_wsl_export_purged_are_left_out(tmp_path):
    names = {c["name"] for c in written(tmp_path, fake_tree(tmp_path / "root"), leave_out=("bash",))["components"]}
    assert "bash" not in names and "libfoo1" in names


@pytest.mark.parametrize("tree_kind", ["no dpkg", "no tree"])
def test_an_image_without_dpkg_gets_an_sbom_without_components_and_a_warning(tmp_path, capsys, tree_kind):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    document = written(tmp_path, ImageTree(root) if tree_kind == "no dpkg" else None)
    assert document.get("components", []) == []
    assert "server.qcow2.cdx.json lists no packages: the image has no dpkg database" in capsys.readouterr().err


@pytest.mark.parametrize(("stated", "spdx"), [
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-2.0+", "GPL-2.0-or-later"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("AGPL-3", "AGPL-3.0-only"),
    ("GFDL-NIV-1.3+", "GFDL-1.3-no-invariants-or-later"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("Expat", "MIT"),
    ("MPL-1.1+", None),                                  # only GNU licenses have -or-later identifiers
    ("Perl", None),                                      # DEP-5 deprecates it: says nothing exact
    ("BSD-3-clause or GPL-2", "BSD-3-Clause OR GPL-2.0-only"),
    ("GPL-2+ or AFL-2.1, and Expat", "(GPL-2.0-or-later OR AFL-2.1) AND MIT"),
    ("Apache-2.0 WITH LLVM-exception", None),            # `with`: left as stated
    ("GPL-2+ with OpenSSL exception", None),
    ("BSD-3-clause or GPL", None),                       # an unversioned GPL names no SPDX licence
    ("public-domain", None),
    ("MIT/X11", None),
])
def test_dep5_short_names_become_spdx_expressions_only_when_every_name_has_an_id(stated, spdx):
    assert sbom.spdx_expression(stated) == spdx


def test_a_new_artifact_takes_its_name_only_after_the_old_sbom_is_gone(tmp_path):
    artifact = tmp_path / "server.qcow2"
    artifact.write_text("old")
    sbom_path(artifact).write_text("{}")   # describes the old artifact
    with atomic_path(artifact) as temp:
        temp.write_text("new")
        assert sbom_path(artifact).exists()            # nothing removed while the new one is being written
    assert artifact.read_text() == "new" and not sbom_path(artifact).exists()


def test_export_writes_the_sbom_lists_it_in_the_manifest_and_publishes_it_again_when_reused(tmp_path):
    status = STATUS.split("\n\n")[0] + "\n"
    make_layout(tmp_path / "img", [tar_bytes(
        ("etc", "dir", {}), ("etc/os-release", "file", {"data": b"ID=debian\nVERSION_ID=12\n"}),
        ("var", "dir", {}), ("var/lib", "dir", {}), ("var/lib/dpkg", "dir", {}),
        ("var/lib/dpkg/status", "file", {"data": status.encode()}),
        ("usr", "dir", {}), ("usr/share", "dir", {}), ("usr/share/doc", "dir", {}), ("usr/share/doc/bash", "dir", {}),
        ("usr/share/doc/bash/copyright", "file", {"data": COPYRIGHT["bash"].encode()}))])
    out = tmp_path / "out"
    args = ("--workdir", str(tmp_path / "wd"), "export", "--to", "tar", f"oci:{tmp_path / 'img'}", "-o", str(out),
            "--name", "img")
    first = cli(*args)
    assert "img.tar.cdx.json" in first.stderr
    made = (out / "img.tar.cdx.json").read_bytes()
    document = strictly_valid(made.decode())
    assert [c["name"] for c in document["components"]] == ["bash"]
    assert properties(document["metadata"]["component"])["openos365:image-id"].startswith("sha256:")
    entry = json.loads((out / "manifest.json").read_text())["artifacts"]["img.tar"]
    assert entry["sbom"] == "img.tar.cdx.json" and "img.tar.cdx.json" in entry["files"]
    assert entry["tools"]["cyclonedx-python-lib"]
    (out / "img.tar.cdx.json").unlink()
    again = cli(*args)
    assert "reused" in again.stderr
    assert (out / "img.tar.cdx.json").read_bytes() == made
    assert (out / "img.tar.cdx.json.sha256").read_text().startswith(entry["files"]["img.tar.cdx.json"]["sha256"])
