"""Finished work is reused only when its inputs are the same, and only after its checksum is verified."""

from __future__ import annotations

import hashlib
from pathlib import Path

from openos365.config import load_layer
from openos365.engine import ImageInfo
from openos365.reuse import BuildRecords, context_key
from tests.conftest import cli

from .test_trust_boundary import make_layout, tar_bytes


def export(workdir: Path, source: str, out: Path, *extra: str) -> str:
    return cli("--workdir", str(workdir), "export", "--to", "tar", source, "-o", str(out), "--name", "img",
               *extra).stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def layout(tmp_path: Path) -> str:
    make_layout(tmp_path / "img", [tar_bytes(("etc", "dir", {}), ("etc/motd", "file", {"data": b"hello\n"}))])
    return f"oci:{tmp_path / 'img'}"


def test_the_same_export_again_is_reused(tmp_path):
    source = layout(tmp_path)
    first = export(tmp_path / "wd", source, tmp_path / "a")
    assert "wrote" in first and "Flattening" in first
    again = export(tmp_path / "wd", source, tmp_path / "b")
    assert "reused" in again and "Flattening" not in again and "Writing the root tree tar" not in again
    assert sha256(tmp_path / "b/img.tar") == sha256(tmp_path / "a/img.tar")
    assert (tmp_path / "b/img.tar.sha256").read_text().split()[0] == sha256(tmp_path / "b/img.tar")
    assert '"reused": true' in (tmp_path / "b/manifest.json").read_text()
    same_dir = export(tmp_path / "wd", source, tmp_path / "b")           # into the directory it is in already
    assert "reused" in same_dir and not [p for p in (tmp_path / "b").iterdir() if ".partial" in p.name]


def test_no_cache_and_other_options_make_it_anew(tmp_path):
    source = layout(tmp_path)
    export(tmp_path / "wd", source, tmp_path / "a")
    forced = export(tmp_path / "wd", source, tmp_path / "b", "--no-cache")
    assert "wrote" in forced and "reused" not in forced
    assert sha256(tmp_path / "b/img.tar") == sha256(tmp_path / "a/img.tar")   # made anew, the same bytes
    other = cli("--workdir", str(tmp_path / "wd"), "export", "--to", "tar", source, "-o", str(tmp_path / "c"),
                "--name", "other").stderr
    assert "wrote" in other and "reused" not in other


def test_a_cached_artifact_that_was_changed_is_made_anew(tmp_path):
    source = layout(tmp_path)
    export(tmp_path / "wd", source, tmp_path / "a")
    good = sha256(tmp_path / "a/img.tar")
    with open(tmp_path / "a/img.tar", "r+b") as fh:   # the published file is a hard link of the cached one
        fh.seek(600)
        fh.write(b"tampered")
    again = export(tmp_path / "wd", source, tmp_path / "b")
    assert "was changed since it was made" in again and "wrote" in again
    assert sha256(tmp_path / "b/img.tar") == good


def test_a_build_context_key_follows_every_file_of_the_layer(tmp_path):
    layer_dir = tmp_path / "layers/web"
    (layer_dir / "files").mkdir(parents=True)
    (layer_dir / "layer.yaml").write_text("from: localhost/x:1\n")
    (layer_dir / "Containerfile").write_text("FROM x\nCOPY files/motd /etc/motd\n")
    (layer_dir / "files/motd").write_text("one\n")
    layer = load_layer(layer_dir)
    key = context_key(layer, "parent-id", "podman", {"PARENT": "parent-id"})
    assert context_key(layer, "parent-id", "podman", {"PARENT": "parent-id"}) == key
    assert context_key(layer, "other-parent", "podman", {"PARENT": "parent-id"}) != key
    (layer_dir / "files/motd").write_text("two\n")
    changed = context_key(layer, "parent-id", "podman", {"PARENT": "parent-id"})
    assert changed != key
    records = BuildRecords(tmp_path / "wd")
    info = ImageInfo(id="abc", names=("localhost/web:latest",), created=1, config={"Cmd": ["/bin/sh"]})
    records.put(layer, changed, info)
    assert records.get(layer, changed) == info
    assert records.get(layer, key) is None
