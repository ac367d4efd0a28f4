"""Two exports at once, and exports killed at any point: no engine needed (an OCI layout as the source)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, REPO

from .test_trust_boundary import make_layout, tar_bytes


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """An image with enough data that flattening and writing take a moment (so runs overlap)."""
    blob = os.urandom(1 << 20)
    members = [("data", "dir", {})] + [(f"data/f{i}", "file", {"data": blob}) for i in range(24)]
    make_layout(tmp_path / "img", [tar_bytes(*members), tar_bytes(("etc", "dir", {}),
                                                                   ("etc/motd", "file", {"data": b"hi\n"}))])
    return tmp_path / "img"


def start(workdir: Path, layout: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "--workdir", str(workdir), "export", "--to", "tar", f"oci:{layout}", "-o",
                             str(out), "--name", "img", *extra], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_exports_of_one_image_at_once_both_succeed(tmp_path, layout):
    runs = [start(tmp_path / "wd", layout, tmp_path / f"out{i}") for i in (1, 2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    first, second = tmp_path / "out1/img.tar", tmp_path / "out2/img.tar"
    assert sha256(first) == sha256(second)
    assert sum("Flattening oci:" in stderr for _, stderr in results) == 1   # one filled the cache, one used it
    assert len(list((tmp_path / "wd/rootfs").glob("archive-*/complete"))) == 1
    assert not list((tmp_path / "wd/rootfs").glob("*.tmp-*"))


def test_two_exports_into_one_output_directory_at_once(tmp_path, layout):
    runs = [start(tmp_path / f"wd{i}", layout, tmp_path / "out") for i in (1, 2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    artifact = tmp_path / "out/img.tar"
    assert (tmp_path / "out/img.tar.sha256").read_text().split()[0] == sha256(artifact)
    sbom = tmp_path / "out/img.tar.cdx.json"
    assert (tmp_path / "out/img.tar.cdx.json.sha256").read_text().split()[0] == sha256(sbom)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img.tar", "img.tar.cdx.json",
                                                                    "img.tar.cdx.json.sha256", "img.tar.sha256",
                                                                    "manifest.json"]


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.3, 1.8])
def test_a_killed_export_leaves_no_artifact_and_nothing_the_next_run_trips_over(tmp_path, layout, delay):
    out = tmp_path / "out"
    done = start(tmp_path / "wd", layout, out)             # an earlier, complete export of the same name
    assert done.wait(timeout=300) == 0
    old_sha = sha256(out / "img.tar")
    (out / "img.tar").write_bytes(b"an older artifact")   # an older, consistent artifact and checksum
    (out / "img.tar.sha256").write_text(f"{sha256(out / 'img.tar')}  img.tar\n")
    run = start(tmp_path / "wd2", layout, out)
    time.sleep(delay)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    checksum = out / "img.tar.sha256"
    if checksum.exists():   # the run got as far as publishing: the checksum must describe the artifact
        assert checksum.read_text().split()[0] == sha256(out / "img.tar")
    elif (out / "img.tar").read_bytes() != b"an older artifact":
        assert sha256(out / "img.tar") == old_sha       # renamed in, not yet checksummed: still complete
    again = start(tmp_path / "wd2", layout, out)
    assert again.wait(timeout=300) == 0, again.communicate()
    assert sha256(out / "img.tar") == old_sha
    assert checksum.read_text().split()[0] == old_sha
    leftovers = [p.name for p in out.iterdir() if ".partial-" in p.name or p.name.startswith(".openos365-work")]
    assert leftovers == []
    assert not list((tmp_path / "wd2/rootfs").glob("*.tmp-*"))


def test_pruning_renames_trees_away_and_deletes_them_once_in_the_background(tmp_path):
    """Old trees vanish from their keys at once (a kill midway leaves no half tree under a key); what a dead
    process was deleting is claimed by one pruner only; the deleting thread raises nothing."""
    import threading

    from openos365.rootfs import _KEEP_TREES, TreeCache

    cache = TreeCache(tmp_path)
    for number in range(_KEEP_TREES + 3):
        entry = cache.base / f"engine-{number:064d}-1-root"
        (entry / "tree/usr/lib").mkdir(parents=True)
        (entry / "tree/usr/lib/file").write_text("x")
        (entry / "complete").write_text("x\n")
        os.utime(entry, (number, number))
    abandoned = cache.base / "engine-old-1-root.tmp-999999999-gone-abcd"   # no such process
    (abandoned / "tree").mkdir(parents=True)
    errors: list[BaseException] = []
    threading.excepthook = lambda args: errors.append(args.exc_value)   # type: ignore[assignment]
    try:
        cache._prune(keep="none")
        cache._prune(keep="none")      # sees the same dead process's leftovers: must not delete them twice
        for thread in threading.enumerate():
            if thread.name == "prune trees":
                thread.join()
    finally:
        threading.excepthook = threading.__excepthook__   # type: ignore[attr-defined]
    assert errors == []
    left = sorted(p.name for p in cache.base.iterdir())
    newest = [f"engine-{n:064d}-1-root" for n in range(_KEEP_TREES + 3)][-(_KEEP_TREES - 1):]
    assert left == newest, left    # nothing else: no half-deleted tree, no lock file of a pruned one
