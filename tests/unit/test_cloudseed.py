"""`openos365 test --cloud-init`: user-data and meta-data checks, the NoCloud seed, and the judge."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import pytest

from openos365 import cloudseed, qemu
from openos365.errors import UserError
from tests.conftest import cli

CLOUD_CONFIG = "#cloud-config\nhostname: web1\nusers:\n  - name: carol\n"
GOOD = {"state": "running", "failed": "", "cloud_init": "done", "cloud_init_errors": "",
        "cloud_init_datasource": "NoCloud"}


@pytest.mark.parametrize("content", [CLOUD_CONFIG, "#cloud-config\n", "#!/bin/sh\necho hi\n",
                                     "#include\nhttps://example.com/ud\n", "## template: jinja\n#cloud-config\n",
                                     "Content-Type: multipart/mixed; boundary=x\n", "\ufeff#cloud-config\na: 1\n"])
def test_user_data_formats_cloud_init_reads_are_accepted(tmp_path, content):
    path = tmp_path / "user-data"
    path.write_text(content)
    cloudseed.check_user_data(path)


def test_gzipped_user_data_is_accepted(tmp_path):
    path = tmp_path / "user-data.gz"
    path.write_bytes(gzip.compress(CLOUD_CONFIG.encode()))
    cloudseed.check_user_data(path)


@pytest.mark.parametrize("content, message", [
    ("hostname: web1\n", "starts with 'hostname: web1'"),
    ("", "starts with ''"),
    ("#cloud-config\nusers: [carol\n", r"user-data:3:1: not valid YAML"),
    ("#cloud-config\n- a\n- b\n", "must be a mapping"),
    (b"\xff\xfe#cloud", "not UTF-8"),
])
def test_user_data_cloud_init_would_ignore_or_reject_is_refused(tmp_path, content, message):
    path = tmp_path / "user-data"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message) as caught:
        cloudseed.check_user_data(path)
    assert "user-data" in caught.value.message and caught.value.hint


def test_missing_user_data_and_directories_are_refused(tmp_path):
    with pytest.raises(UserError, match="cannot be read"):
        cloudseed.check_user_data(tmp_path / "absent")
    with pytest.raises(UserError, match="is a directory"):
        cloudseed.check_user_data(tmp_path)


def test_meta_data_needs_an_instance_id(tmp_path):
    path = tmp_path / "meta-data"
    path.write_text("instance-id: i-1\nlocal-hostname: a\n")
    cloudseed.check_meta_data(path)
    path.write_text("local-hostname: a\n")
    with pytest.raises(UserError, match="no 'instance-id'"):
        cloudseed.check_meta_data(path)
    path.write_text("just text\n")
    with pytest.raises(UserError, match="must be a mapping"):
        cloudseed.check_meta_data(path)


@pytest.mark.parametrize("artifact, name", [("cloud.qcow2", "cloud"), ("My_Image.v2.raw", "my-image"),
                                            ("---.img", "openos365"), ("a" * 80 + ".raw", "a" * 63)])
def test_default_meta_data_names_the_host_after_the_artifact(tmp_path, artifact, name):
    assert cloudseed.host_name_for(tmp_path / artifact) == name
    assert cloudseed.default_meta_data(tmp_path / artifact) == f"instance-id: iid-openos365-{name}\n" \
                                                                f"local-hostname: {name}\n"


@pytest.mark.skipif(shutil.which("xorriso") is None or shutil.which("blkid") is None,
                    reason="needs xorriso and blkid")
def test_seed_is_an_iso_labelled_cidata_with_user_data_and_meta_data(tmp_path):
    user_data = tmp_path / "ud"
    user_data.write_text(CLOUD_CONFIG)
    (tmp_path / "disk.qcow2").write_bytes(b"")
    seed = cloudseed.write_seed(tmp_path, tmp_path / "disk.qcow2", user_data, None)
    probe = subprocess.run(["blkid", "-p", "-o", "export", str(seed)], capture_output=True, text=True, check=True)
    assert "LABEL=cidata" in probe.stdout and "TYPE=iso9660" in probe.stdout
    out = tmp_path / "extracted"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(seed), "-extract", "/", str(out)],
                   capture_output=True, check=True)
    assert sorted(p.name for p in out.iterdir()) == ["meta-data", "user-data"]
    assert (out / "user-data").read_text() == CLOUD_CONFIG
    assert (out / "meta-data").read_text() == "instance-id: iid-openos365-disk\nlocal-hostname: disk\n"


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")
def test_the_seed_carries_the_given_meta_data(tmp_path):
    user_data, meta_data = tmp_path / "ud", tmp_path / "md"
    user_data.write_text(CLOUD_CONFIG)
    meta_data.write_text("instance-id: i-42\nlocal-hostname: given\n")
    seed = cloudseed.write_seed(tmp_path, tmp_path / "disk.qcow2", user_data, meta_data)
    out = tmp_path / "extracted"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(seed), "-extract", "/", str(out)],
                   capture_output=True, check=True)
    assert (out / "meta-data").read_text() == meta_data.read_text()


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")
def test_the_seed_is_attached_as_a_cdrom_after_the_artifact(tmp_path):
    (tmp_path / "x.raw").write_bytes(bytes(512))
    user_data = tmp_path / "ud"
    user_data.write_text(CLOUD_CONFIG)
    argv, _ = qemu.qemu_argv(qemu.BootRequest(artifact=tmp_path / "x.raw", cloud_init=user_data), tmp_path, "tcg")
    seed = argv.index(f"file={tmp_path / 'cidata.iso'},media=cdrom,readonly=on,if=none,id=cidata")
    assert argv.index(f"file={tmp_path / 'overlay.qcow2'},format=qcow2,if=virtio") < seed
    assert argv[seed + 2] == "ide-cd,drive=cidata,bus=ide.1"
    plain, _ = qemu.qemu_argv(qemu.BootRequest(artifact=tmp_path / "x.raw"), tmp_path, "tcg")
    assert not any("cidata" in arg for arg in plain)


@pytest.mark.parametrize("change, problem", [
    ({}, None),
    ({"cloud_init": "error", "cloud_init_errors": "modules-config: bad users"}, "status is 'error'"),
    ({"cloud_init_errors": "init: oops"}, "cloud-init errors: init: oops"),
    ({"cloud_init": "disabled", "cloud_init_datasource": ""}, "status is 'disabled'"),
    ({"cloud_init_datasource": "None"}, "datasource 'None', not the NoCloud seed"),
])
def test_with_a_seed_the_judge_needs_cloud_init_done_from_it_without_errors(change, problem):
    problems = qemu.judge({**GOOD, **change}, None, cloud_init=True)
    assert (problems == []) if problem is None else any(problem in p for p in problems)
    assert qemu.judge({**GOOD, **change}, None) == []   # without a seed, cloud-init's state is not judged


def test_an_image_without_the_cloud_init_report_fails_a_seeded_boot():
    problems = qemu.judge({"state": "running", "failed": ""}, None, cloud_init=True)
    assert any("reports nothing about cloud-init" in p for p in problems)


def test_cli_refuses_bad_user_data_before_booting(tmp_path):
    disk = tmp_path / "x.qcow2"
    disk.write_bytes(b"")
    bad = tmp_path / "user-data"
    bad.write_text("users: []\n")
    result = cli("test", str(disk), "--cloud-init", str(bad), check=False)
    assert result.returncode == 2 and "does not read as user-data" in result.stderr + result.stdout
    result = cli("test", str(disk), "--cloud-meta-data", str(bad), check=False)
    assert result.returncode == 2 and "needs --cloud-init" in result.stderr + result.stdout


def test_the_summary_says_what_cloud_init_did(tmp_path):
    report = qemu.BootReport(tmp_path / "cloud.qcow2", "disk, bios", "tcg", 60.0, fields=dict(GOOD))
    assert report.summary().endswith(", cloud-init done (NoCloud)")
    report.fields = {**GOOD, "cloud_init": "disabled", "cloud_init_datasource": ""}
    assert report.summary().endswith(", cloud-init disabled")
    report.fields = {"state": "running"}
    assert "cloud-init" not in report.summary()
