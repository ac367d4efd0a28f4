"""cloud-init for `openos365 test --cloud-init USER-DATA`: check the user's files, write a NoCloud seed (an ISO
labelled `cidata` holding `user-data` and `meta-data`, as cloud-localds and the clouds' config drives do),
attach it, and judge what the guest's cloud-init reported.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from .config import _syntax_error, load_yaml_mapping
from .errors import UserError, shown
from .runner import run

SEED_LABEL = "cidata"   # what NoCloud looks for (cloud-init also accepts CIDATA)

# The first line (or bytes) of every user-data format cloud-init 22.4 reads, besides #cloud-config
OTHER_FORMATS = ("#!", "#include", "#include-once", "#cloud-boothook", "#part-handler", "#cloud-config-archive",
                 "#cloud-config-jsonp", "## template: jinja", "Content-Type:", "MIME-Version:")
GZIP_MAGIC = b"\x1f\x8b"
FORMATS_HINT = ("start it with a '#cloud-config' line (or '#!' for a script, '#include', '#cloud-boothook', "
                "'## template: jinja', a MIME multi-part message); see cloud-init's user-data formats")


def check_user_data(path: Path) -> None:
    """USER-DATA must be a file cloud-init reads as user-data; a #cloud-config must be a YAML mapping."""
    try:
        data = path.read_bytes()
    except IsADirectoryError as exc:
        raise UserError(f"--cloud-init {shown(path)}: is a directory, not a user-data file",
                        hint="give the user-data file itself") from exc
    except OSError as exc:
        raise UserError(f"--cloud-init {shown(path)}: cannot be read: {exc.strerror}",
                        hint="give an existing user-data file you may read") from exc
    if data.startswith(GZIP_MAGIC):
        return
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise UserError(f"--cloud-init {shown(path)}: not UTF-8 text (nor gzip)", hint=FORMATS_HINT) from exc
    first = text.lstrip("\ufeff").split("\n", 1)[0].rstrip()
    if first == "#cloud-config":
        _check_cloud_config(path, text)
    elif not first.startswith(OTHER_FORMATS):
        raise UserError(f"--cloud-init {shown(path)}: starts with {first[:40]!r}, which cloud-init does not read as "
                        "user-data (it would ignore the file)", hint=FORMATS_HINT)


def _check_cloud_config(path: Path, text: str) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(path, exc) from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{shown(path)}: not valid YAML: {exc}", hint="fix the YAML syntax") from exc
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{shown(path)}: a #cloud-config must be a mapping of keys to values, not "
                        f"{type(data).__name__}", hint="write keys such as 'users:', 'hostname:', 'runcmd:'")


def check_meta_data(path: Path) -> None:
    data = load_yaml_mapping(path, needs="NoCloud meta-data is a YAML mapping: 'instance-id: ...' and "
                             "optionally 'local-hostname: ...'")
    if "instance-id" not in data:
        raise UserError(f"--cloud-meta-data {shown(path)}: has no 'instance-id'",
                        hint="add 'instance-id: SOME-ID' (cloud-init runs its once-per-instance steps again "
                        "when it changes)")


def host_name_for(artifact: Path) -> str:
    """A host name from an artifact's name: 'cloud.qcow2' -> 'cloud', 'My_Image.raw' -> 'my-image'."""
    stem = artifact.name.split(".", 1)[0].lower()
    return re.sub(r"[^a-z0-9]+", "-", stem).strip("-")[:63].strip("-") or "openos365"


def default_meta_data(artifact: Path) -> str:
    name = host_name_for(artifact)
    return f"instance-id: iid-openos365-{name}\nlocal-hostname: {name}\n"


def write_seed(work: Path, artifact: Path, user_data: Path, meta_data: Path | None) -> Path:
    """work/cidata.iso with the user-data and the meta-data (given, or a default naming the artifact)."""
    stage = work / "cidata"
    stage.mkdir()
    shutil.copyfile(user_data, stage / "user-data")
    if meta_data is not None:
        shutil.copyfile(meta_data, stage / "meta-data")
    else:
        (stage / "meta-data").write_text(default_meta_data(artifact))
    seed = work / "cidata.iso"
    run(["xorriso", "-as", "mkisofs", "-volid", SEED_LABEL, "-joliet", "-rational-rock", "-output", str(seed),
         str(stage)], step="write the NoCloud seed (cidata ISO)", capture=True)
    return seed


def seed_drive_args(seed: Path) -> list[str]:
    """A read-only CD-ROM, as libvirt and the clouds attach seeds: never a boot device, never a disk an
    installer could take as its target. On a port of q35's AHCI controller of its own: left to choose, qemu
    puts it on the port an ISO artifact's CD-ROM already holds (ide.5), which takes one device only."""
    return ["-drive", f"file={seed},media=cdrom,readonly=on,if=none,id=cidata",
            "-device", "ide-cd,drive=cidata,bus=ide.1"]


def problems(fields: dict[str, str]) -> list[str]:
    """With a seed attached, cloud-init must have used it and finished without errors."""
    status = fields.get("cloud_init")
    if status is None:
        return ["the image reports nothing about cloud-init (no /usr/libexec/openos365/boot-check.d/cloud-init): "
                "boot an image of layers/cloud, or a layer built on it"]
    found = []
    if status != "done":
        found.append(f"cloud-init status is '{status}', not 'done'")
    if fields.get("cloud_init_errors"):
        found.append(f"cloud-init errors: {fields['cloud_init_errors']}")
    if status == "done" and fields.get("cloud_init_datasource") != "NoCloud":
        found.append(f"cloud-init used the datasource '{fields.get('cloud_init_datasource')}', not the NoCloud seed")
    return found
