"""Export configs (`openos365 export -c FILE`): validated like layer.yaml, merged in a fixed order."""

from __future__ import annotations

from pathlib import Path

import pytest

from openos365.config import load_export_config
from openos365.errors import UserError
from openos365.export import run_exports
from openos365.exporters import EXPORTERS
from tests.conftest import REPO

FORMATS = list(EXPORTERS)


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "release.yaml"
    path.write_text(text)
    return path


def test_the_documented_example_is_valid():
    loaded = load_export_config(REPO / "docs/release.example.yaml", FORMATS)
    assert list(loaded.formats) == ["qcow2", "vhd", "iso", "wsl"]
    assert loaded.overrides("vhd") == {"hostname": "server", "kernel_cmdline": "quiet", "size": 8 << 30}
    assert loaded.overrides("wsl")["wsl_format"] == "wsl"
    assert loaded.output == REPO / "docs/../out/release"


@pytest.mark.parametrize("text, message", [
    ("formats: {qcow2: {}}\nsorce: x\n", "unknown key 'sorce'"),
    ("formats: {qcow3: {}}\n", "formats: unknown format 'qcow3'"),
    ("formats: {qcow2: {sise: 4G}}\n", "unknown key 'formats.qcow2.sise'"),
    ("formats: {install-iso: {unattended: 'yes'}}\n", "'formats.install-iso.unattended' must be a bool"),
    ("formats: {qcow2: {size: [1]}}\n", "'formats.qcow2.size' must be a str or int"),
    ("defaults: {hostname: web}\n", "'formats' lists no format"),
    ("formats: [qcow2]\n", "'formats' must be a dict"),
])
def test_mistakes_name_the_file_and_the_key(tmp_path, text, message):
    with pytest.raises(UserError) as err:
        load_export_config(config(tmp_path, text), FORMATS)
    assert message in err.value.message and str(tmp_path / "release.yaml") in err.value.message


def test_a_format_given_twice_or_none_at_all_is_refused(tmp_path):
    with pytest.raises(UserError, match="lists 'tar' twice"):
        run_exports("layers/server", "tar,tar", None, tmp_path, {}, dry_run=True, engine_name=None,
                    workdir=tmp_path)
    with pytest.raises(UserError, match="no output format"):
        run_exports("layers/server", None, None, tmp_path, {}, dry_run=True, engine_name=None, workdir=tmp_path)


def test_options_are_checked_for_every_format_before_any_work(tmp_path):
    path = config(tmp_path, "source: layers/server\nformats:\n  tar: {}\n  raw: {compression: zstd}\n")
    with pytest.raises(UserError, match="--compression does not apply to --to raw"):
        run_exports(None, None, path, tmp_path / "out", {}, dry_run=False, engine_name=None,
                    workdir=tmp_path / "wd")
    assert not (tmp_path / "out").exists() and not (tmp_path / "wd").exists()   # nothing was built
