"""The CLI as a user meets it: exit codes and messages for bad input, no traceback."""

from tests.conftest import cli

from .test_config import make_layer


def test_unknown_format_lists_the_formats():
    result = cli("export", "--to", "floppy", "layers/server", check=False)
    assert result.returncode == 2
    assert "unknown output format '--to floppy'" in result.stderr
    assert "qcow2" in result.stderr and "Traceback" not in result.stderr


def test_bad_layer_yaml_names_file_and_key(tmp_path):
    layer = make_layer(tmp_path, "web", "parent: base\nexport:\n  sise: 4G\n")
    result = cli("export", "--to", "tar", str(layer), "-o", str(tmp_path / "out"), check=False)
    assert result.returncode == 2
    assert "layer.yaml: unknown key 'export.sise'" in result.stderr.replace("\n", "")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dry_run_prints_the_plan_without_building(tmp_path):
    result = cli("export", "--to", "qcow2", "layers/server", "--dry-run", "-o", str(tmp_path / "out"))
    text = result.stderr
    assert "plan for --to qcow2" in text
    assert "mkfs.ext4 -d" in text and "qemu-img convert to qcow2" in text
    assert not (tmp_path / "out").exists()


def test_bad_size_option():
    result = cli("export", "--to", "raw", "layers/server", "--size", "huge", "--dry-run", check=False)
    assert result.returncode == 2
    assert "--size: 'huge' is not a size" in result.stderr


def test_missing_source_directory(tmp_path):
    result = cli("export", "--to", "tar", str(tmp_path), "-o", str(tmp_path / "o"), check=False)
    assert result.returncode != 0
    assert "not a layer" in result.stderr or "does not exist" in result.stderr


def test_version():
    assert cli("version").stdout.strip()


def test_unknown_engine(tmp_path):
    result = cli("build", "layers/base", "--engine", "rkt", check=False)
    assert result.returncode == 2
    assert "unknown engine 'rkt'" in result.stderr and "podman" in result.stderr


def test_no_engine_installed_says_what_to_install(tmp_path):
    result = cli("build", "layers/base", check=False, env={"PATH": str(tmp_path)})
    assert result.returncode == 3, result.stderr
    assert "no container engine found" in result.stderr
    assert "apt-get install podman" in result.stderr


def test_missing_tool_is_named_before_any_work(tmp_path):
    result = cli("export", "--to", "qcow2", "layers/server", "-o", str(tmp_path), check=False,
                 env={"PATH": str(tmp_path)})
    assert result.returncode == 3
    assert "--to qcow2 needs" in result.stderr and "apt-get install" in result.stderr
    assert list(tmp_path.iterdir()) == []
