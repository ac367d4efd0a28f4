"""The SBOM of a real image: layers/base exported to its two cheapest formats, the flattened tree's (tar) and
the engine's own archive (docker), each with a CycloneDX 1.5 document that lists what dpkg in the artifact
says is installed."""

from __future__ import annotations

import json
import tarfile
from urllib.parse import quote

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from openos365 import dpkg
from tests.conftest import cli

pytestmark = pytest.mark.integration


def installed_in(tar_path) -> dict[str, str]:
    """name -> version from the dpkg status inside the exported tar (the artifact itself, not our reader)."""
    with tarfile.open(tar_path) as tar:
        status = tar.extractfile("./var/lib/dpkg/status").read().decode()
    return {dpkg.field(s, "Package"): dpkg.field(s, "Version") for s in dpkg.stanzas(status) if dpkg.is_installed(s)}


def test_base_exports_carry_a_valid_sbom_that_lists_bash_as_debian_states_it(base_image, workdir, tmp_path):
    out = tmp_path / "out"
    cli("--workdir", str(workdir), "export", "--to", "tar,docker", "layers/base", "-o", str(out))
    installed = installed_in(out / "base.tar")
    manifest = json.loads((out / "manifest.json").read_text())["artifacts"]
    for entry, artifact, kind in (("base.tar", "base.tar", "operating-system"),
                                  ("base.docker", "base.docker.tar", "container")):
        assert manifest[entry]["sbom"] == f"{artifact}.cdx.json"
        text = (out / f"{artifact}.cdx.json").read_text()
        assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
        document = json.loads(text)
        assert document["metadata"]["component"]["type"] == kind
        assert sorted(c["name"] for c in document["components"]) == sorted(installed)
        bash = next(c for c in document["components"] if c["name"] == "bash")
        assert bash["version"] == installed["bash"]
        assert bash["purl"] == f"pkg:deb/debian/bash@{quote(installed['bash'], safe=':')}?arch=amd64&distro=debian-13"
        assert bash["licenses"] == [{"license": {"id": "GPL-3.0-or-later"}}]   # Debian's copyright: GPL-3+
        stated = {p["name"]: p["value"] for p in bash["properties"]}
        assert stated["openos365:deb:source"] == "bash" and stated["openos365:deb:license"] == "GPL-3+"
