"""Real builds with podman, and the flattened tree compared with what a container of the image sees."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.integration

PARENT = """ARG PARENT=localhost/openos365/base:latest
FROM ${PARENT}
RUN mkdir -p /opt/app/old && echo old > /opt/app/old/file && echo gone > /etc/openos365-test-gone
"""
CHILD = """ARG PARENT
FROM ${PARENT}
RUN mkdir -p /srv/data && echo one > /srv/data/a && ln /srv/data/a /srv/data/hard \\
 && chown 1234:4321 /srv/data/a && chmod 2750 /srv/data \\
 && cp /bin/true /usr/local/bin/suid-true && chmod 4755 /usr/local/bin/suid-true \\
 && ln -s /srv/data/a /srv/link && mkfifo /srv/fifo \\
 && rm /etc/openos365-test-gone \\
 && rm -rf /opt/app && mkdir /opt/app && echo new > /opt/app/new \\
 && apt-get update && apt-get install -y libcap2-bin && rm -rf /var/lib/apt/lists/* \\
 && cp /bin/true /usr/local/bin/cap-true && setcap cap_net_raw+ep /usr/local/bin/cap-true
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, base_image) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name, yaml_text, containerfile in (
        ("t-parent", f"from: {base_image}\nimage: localhost/openos365-test/t-parent\n", PARENT),
        ("t-child", "parent: t-parent\nimage: localhost/openos365-test/t-child\n", CHILD),
    ):
        layer = root / "layers" / name
        layer.mkdir(parents=True)
        (layer / "layer.yaml").write_text(yaml_text)
        (layer / "Containerfile").write_text(containerfile)
    return root


@pytest.fixture(scope="module")
def built(project) -> str:
    result = cli("build", str(project / "layers/t-child"))
    assert "built localhost/openos365-test/t-child:latest sha256:" in result.stderr.replace("\n", " ")
    return "localhost/openos365-test/t-child:latest"


def snapshot(root: Path, *, times: bool = False) -> dict[str, tuple]:
    """Everything about a tree but times (unless asked): type, mode, owner, size, link target, xattrs,
    hard-link group; with times, also each mtime (ns) and each file's content."""
    entries, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            xattrs = tuple(sorted((x, os.getxattr(path, x, follow_symlinks=False))
                                  for x in os.listxattr(path, follow_symlinks=False)))
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            entries[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, target,
                            xattrs)
            if times:
                content = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
                entries[rel] += (st.st_mtime_ns, hashlib.sha256(content).hexdigest())
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
    # groups within this tree (a tree made from a cached one shares inodes with it: nlink counts those too)
    entries["<hardlinks>"] = tuple(sorted(tuple(sorted(v)) for v in inodes.values() if len(v) > 1))
    return entries


def container_view(ref: str) -> dict[str, tuple]:
    """The snapshot of the image as the engine mounts it (the reference to compare flattening with)."""
    mounted = Path(subprocess.run(["podman", "image", "mount", ref], capture_output=True, text=True,
                                  check=True).stdout.strip())
    try:
        return snapshot(mounted)
    finally:
        subprocess.run(["podman", "image", "unmount", ref], capture_output=True, check=False)


def test_second_build_is_all_cache_hits(project, built):
    first_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", built], capture_output=True,
                              text=True, check=True).stdout.strip()
    again = cli("-v", "build", str(project / "layers/t-child"))
    text = again.stderr.replace("\n", " ")
    assert text.count("unchanged since its last build") == 2      # neither layer goes to the engine again
    assert "podman build" not in text
    assert first_id in text
    engine = cli("-v", "build", "--no-cache", str(project / "layers/t-child"))   # the engine's own cache
    assert engine.stderr.count("Using cache") == 0 and "podman build" in engine.stderr


def test_flattened_tree_equals_the_container_view(built, tmp_path):
    cli("export", "--to", "dir", built, "-o", str(tmp_path), "--name", "tree")
    ours = snapshot(tmp_path / "tree")
    assert ours == container_view(built)
    # and the things that make this meaningful are really there
    assert ours["srv/data/a"][2:4] == (1234, 4321)
    assert ours["srv/data"][1] == 0o2750
    assert ours["usr/local/bin/suid-true"][1] == 0o4755
    assert ("srv/data/a", "srv/data/hard") in ours["<hardlinks>"]
    assert ours["srv/link"][5] == "/srv/data/a"
    assert stat.S_ISFIFO(ours["srv/fifo"][0])
    assert any(name == "security.capability" for name, _ in ours["usr/local/bin/cap-true"][6])
    assert "etc/openos365-test-gone" not in ours  # whiteout applied
    assert "opt/app/old" not in ours and "opt/app/new" in ours  # opaque directory applied


@pytest.mark.parametrize("image", ["built", "server_image"])
def test_archive_layers_flatten_to_the_engines_view(image, request, tmp_path):
    """The engine-free path (layer tars applied and verified by openos365 itself, as root here) against the
    engine's own mount, each flattened into its own empty cache: nothing is shared between the sides."""
    ref = request.getfixturevalue(image)
    archive = tmp_path / "img.oci.tar"
    subprocess.run(["podman", "save", "--format", "oci-archive", "-o", str(archive), ref], check=True,
                   capture_output=True)
    cli("--workdir", str(tmp_path / "wd-archive"), "export", "--to", "dir", f"oci-archive:{archive}",
        "-o", str(tmp_path / "a"), "--name", "tree")
    archive.unlink()
    ours = snapshot(tmp_path / "a/tree")
    assert ours == container_view(ref)
    assert len(ours) > 20


def test_tar_export_keeps_owners_modes_and_caps(built, tmp_path):
    result = cli("export", "--to", "tar", built, "-o", str(tmp_path))
    tar_path = tmp_path / "t-child.tar"
    assert f"wrote {tar_path}" in result.stderr.replace("\n", "")
    with tarfile.open(tar_path) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    assert (members["srv/data/a"].uid, members["srv/data/a"].gid) == (1234, 4321)
    assert members["usr/local/bin/suid-true"].mode & 0o7777 == 0o4755
    assert "SCHILY.xattr.security.capability" in members["usr/local/bin/cap-true"].pax_headers
    assert members["srv/data/hard"].islnk() or members["srv/data/a"].islnk()
    sha = (tmp_path / "t-child.tar.sha256").read_text().split()[0]
    manifest = (tmp_path / "manifest.json").read_text()
    assert sha in manifest


def test_second_export_reuses_the_flattened_tree(built, tmp_path):
    cli("export", "--to", "tar", built, "-o", str(tmp_path / "1"))
    again = cli("-v", "export", "--to", "tar", built, "-o", str(tmp_path / "2"), "--no-cache")
    assert "is cached" in again.stderr
    assert "Flattening" not in again.stderr


def test_a_tree_started_from_the_build_step_below_equals_a_full_copy(built, tmp_path):
    """The child's tree made from the cached tree of the step below its top layer plus that layer, replayed
    from the engine's layer directory, is the full copy's tree: content, modes, owners, xattrs, hard links,
    whiteouts, opaque directories and every mtime. The step's cached tree, whose inodes the child's shares,
    is still equal to its own full copy afterwards."""
    from openos365.engine import detect
    from openos365.rootfs import TreeCache, flatten_engine_image

    derived = cli("-v", "--workdir", str(tmp_path / "wd"), "export", "--to", "tar", built, "-o", str(tmp_path / "o"))
    assert "flattening the build step before the top layer first" in derived.stderr
    assert "applied 1 more layer(s)" in derived.stderr
    engine = detect("podman")
    child = engine.inspect(built)
    below = engine.inspect("localhost/openos365-test/t-parent:latest")
    assert below.layer_dirs == child.layer_dirs[:-1]
    entries = {p.name: p / "tree" for p in (tmp_path / "wd/rootfs").iterdir() if (p / "complete").exists()}
    derived_child = next(tree for name, tree in entries.items() if name.startswith(f"engine-{child.id}"))
    cached_below = next(tree for name, tree in entries.items() if name.startswith(f"engine-{below.id}"))
    epoch = int(derived_child.parent.name.split("-")[2])

    def full_copy(image_id: str) -> Path:
        wd = tmp_path / f"full-{image_id[:12]}"
        return flatten_engine_image(engine, image_id, image_id, epoch, TreeCache(wd), wd, from_parent=False)

    child_view = snapshot(derived_child, times=True)
    assert child_view == snapshot(full_copy(child.id), times=True)
    assert "etc/openos365-test-gone" not in child_view and "opt/app/old" not in child_view
    assert snapshot(cached_below, times=True) == snapshot(full_copy(below.id), times=True)


def test_failed_run_step_names_the_step_and_shows_output(tmp_path, base_image):
    layer = tmp_path / "layers/broken"
    layer.mkdir(parents=True)
    (layer / "layer.yaml").write_text(f"from: {base_image}\nimage: localhost/openos365-test/broken\n")
    (layer / "Containerfile").write_text("ARG PARENT\nFROM ${PARENT}\nRUN echo boom-marker-42 && exit 3\n")
    result = cli("build", str(layer), check=False)
    assert result.returncode != 0
    text = result.stderr.replace("\n", " ")
    assert "RUN echo boom-marker-42" in text
    assert "boom-marker-42" in text and "Containerfile" in text
    assert "Traceback" not in result.stderr


def test_missing_image_reference(tmp_path):
    result = cli("export", "--to", "tar", "localhost/openos365-test/does-not-exist:1", "-o", str(tmp_path),
                 check=False)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not list(tmp_path.iterdir())


def test_layers_command_shows_the_tree(built, project):
    result = cli("layers", str(project / "layers"))
    assert "t-child: localhost/openos365-test/t-child:latest [built]" in result.stderr.replace("\n", " ")


def test_inspect_finds_kernel_and_live_support(server_image):
    import json

    info = json.loads(cli("inspect", "layers/server").stdout)
    assert info["kernel"].startswith("boot/vmlinuz-") and info["initrd"].startswith("boot/initrd.img-")
    assert info["live"] == "live-boot" and info["systemd_repart"] is True
    assert set(info["grub"]) == {"i386-pc", "x86_64-efi"}


def test_json_progress_events(built, tmp_path):
    import json

    result = cli("--json", "export", "--to", "tar", built, "-o", str(tmp_path), "--no-cache")
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    kinds = {event["event"] for event in events}
    assert {"step-start", "step-done", "done"} <= kinds
    assert events[-1]["event"] == "done" and "t-child.tar" in events[-1]["message"]
