"""layers/cloud: a qcow2 booted with a NoCloud seed (cloud-init applies the user-data's user, key and host name,
and grows nothing itself), and without one (cloud-init stays off, export-time --user/--ssh-key still work).

Two boots under TCG, about a minute and a half each; the disk is exported once per module.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from openos365.qemu import BootRequest, boot_test
from tests.conftest import REPO, cli

pytestmark = pytest.mark.boot
GIB = 1 << 30


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh ed25519 key pair: the public key's path and its SHA256 fingerprint."""
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@openos365-test", "-f", str(key)],
                   check=True)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    return key.with_name(f"{name}.pub"), fingerprint


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: keypair(directory, name) for name in ("alice", "carol")}


@pytest.fixture(scope="module")
def cloud_qcow2(tmp_path_factory, keys) -> Path:
    """layers/cloud with an export-time user (alice), as a user of an image without cloud-init would add one."""
    out = tmp_path_factory.mktemp("cloud")
    cli("export", "--to", "qcow2", "layers/cloud", "-o", str(out), "--user", "alice", "--ssh-key",
        str(keys["alice"][0]))
    return out / "cloud.qcow2"


def boot(artifact: Path, **kwargs):
    return boot_test(BootRequest(artifact=artifact, workdir=REPO / ".openos365", timeout=900, **kwargs))


def test_cloud_init_applies_the_seeds_user_key_and_host_name_and_leaves_growth_to_repart(cloud_qcow2, keys,
                                                                                         tmp_path):
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\n"
                         "hostname: cloudy\n"
                         "locale: de_DE.UTF-8\n"
                         "users:\n"
                         "  - name: carol\n"
                         "    shell: /bin/bash\n"
                         "    sudo: ALL=(ALL) NOPASSWD:ALL\n"
                         "    ssh_authorized_keys:\n"
                         f"      - {keys['carol'][0].read_text().strip()}\n")
    report = boot(cloud_qcow2, cloud_init=user_data, grow=GIB)   # the judge fails the boot unless cloud-init is done
    fields = report.fields
    assert fields["state"] == "running" and fields["failed"] == ""
    assert fields["cloud_init"] == "done" and fields["cloud_init_errors"] == "" and fields["cloud_init_warnings"] == "0"
    assert fields["cloud_init_datasource"] == "NoCloud" and fields["cloud_init_seed"].startswith("/dev/sr")
    assert fields["cloud_init_instance_id"] == "iid-openos365-cloud"   # the default meta-data, from the name
    assert fields["hostname"] == "cloudy"                              # user-data's, over meta-data's and export's
    assert set(fields["users"].split()) == {"alice", "carol"}
    authorized = dict(entry.split(":", 1) for entry in fields["ssh_authorized_keys"].split())
    assert authorized["carol"] == keys["carol"][1]
    assert authorized["alice"] == keys["alice"][1]       # the export's user is kept
    # one mechanism makes the host keys: cloud-init's ssh module, and our first-boot unit then does nothing
    assert fields["ssh_host_keys_made_by"] == "cloud-init" and fields["ssh_host_keys"] == "3"   # rsa, ecdsa, ed25519
    # the root grew to the enlarged disk (judged by boot_test), by systemd-repart alone
    assert fields["cloud_init_growpart"] == "off" and fields["cloud_init_resizefs"] == "off"
    assert len(fields["machine_id"]) == 32
    # a locale Debian's /etc/locale.gen does not list: made at first boot (layers/cloud's locale-gen), then set
    assert fields["lang"] == "de_DE.UTF-8" and fields["locales_made"] == "de_DE.utf8"


def test_without_a_seed_cloud_init_stays_off_and_the_export_time_user_logs_in(cloud_qcow2, keys):
    fields = boot(cloud_qcow2).fields
    assert fields["state"] == "running" and fields["failed"] == ""
    # ds-identify found no datasource: cloud-init disabled itself, no metadata-service probing
    assert fields["cloud_init"] == "disabled" and fields["cloud_init_datasource"] == ""
    assert fields["hostname"] == "cloud"
    assert fields["users"].split() == ["alice"]
    assert fields["ssh_authorized_keys"] == f"alice:{keys['alice'][1]}"
    assert fields["ssh_host_keys_made_by"] == "openos365-ssh-hostkeys" and fields["ssh_host_keys"] == "3"
    assert len(fields["machine_id"]) == 32
    assert fields["lang"] == "C.UTF-8" and fields["locales_made"] == ""   # nothing made at boot unasked


def test_the_image_carries_no_instance_state_or_identity(cloud_qcow2):
    """What ds-identify and cloud-init find in a fresh image: no earlier instance, no keys, no machine-id."""
    image = "localhost/openos365/cloud:latest"
    root = Path(subprocess.run(["podman", "image", "mount", image], capture_output=True, text=True,
                               check=True).stdout.strip())
    try:
        assert not (root / "var/lib/cloud").exists() or not any((root / "var/lib/cloud").iterdir())
        assert not list((root / "var/log").glob("cloud-init*"))
        assert not list((root / "etc/ssh").glob("ssh_host_*"))
        assert (root / "etc/machine-id").read_text() == ""
        assert not (root / "usr/bin/growpart").exists()          # cloud-guest-utils is not installed
        config = (root / "etc/cloud/cloud.cfg.d/95-openos365.cfg").read_text()
        assert "datasource_list: [NoCloud, ConfigDrive, OpenStack, Ec2, Azure, GCE]" in config
        assert (root / "usr/libexec/openos365/boot-check.d/cloud-init").stat().st_mode & 0o111
    finally:
        subprocess.run(["podman", "image", "unmount", image], capture_output=True, check=False)
