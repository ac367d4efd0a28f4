from pathlib import Path

import pytest

from openos365.config import ExportOptions, load_layer, parse_size
from openos365.errors import UserError


def make_layer(tmp_path: Path, name: str, yaml_text: str, containerfile: bool = True) -> Path:
    layer = tmp_path / "layers" / name
    layer.mkdir(parents=True)
    (layer / "layer.yaml").write_text(yaml_text)
    if containerfile:
        (layer / "Containerfile").write_text("ARG PARENT\nFROM ${PARENT}\n")
    return layer


@pytest.mark.parametrize("text,expected", [("4G", 4 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29),
                                           ("100", 100), (2048, 2048), ("10k", 10240)])
def test_parse_size(text, expected):
    assert parse_size(text, where="t") == expected


def test_parse_size_rejects_garbage():
    with pytest.raises(UserError, match="'lots' is not a size"):
        parse_size("lots", where="--size")


def test_layer_defaults(tmp_path):
    layer = load_layer(make_layer(tmp_path, "web", "parent: base\n"))
    assert layer.parent == "base" and layer.base_image is None
    assert layer.ref == "localhost/openos365/web:latest"
    assert layer.export == ExportOptions()


def test_layer_export_section(tmp_path):
    layer = load_layer(make_layer(tmp_path, "web", "parent: base\nexport:\n  size: 3G\n  firmware: uefi\n"
                                  "  hostname: web1\n"))
    assert layer.export.size == 3 << 30
    assert layer.export.firmware == "uefi"
    assert layer.export.hostname == "web1"


def test_unknown_key_names_file_and_key(tmp_path):
    path = make_layer(tmp_path, "web", "parent: base\nparnet: x\n")
    with pytest.raises(UserError) as err:
        load_layer(path)
    assert str(path / "layer.yaml") in err.value.message
    assert "'parnet'" in err.value.message
    assert "parent" in (err.value.hint or "")


def test_unknown_export_key_is_dotted(tmp_path):
    path = make_layer(tmp_path, "web", "parent: base\nexport:\n  firmwre: bios\n")
    with pytest.raises(UserError, match=r"unknown key 'export\.firmwre'"):
        load_layer(path)


def test_bad_firmware_value(tmp_path):
    path = make_layer(tmp_path, "web", "parent: base\nexport:\n  firmware: coreboot\n")
    with pytest.raises(UserError, match="export.firmware is 'coreboot'") as err:
        load_layer(path)
    assert "bios, uefi, both" in (err.value.hint or "")


def test_parent_and_from_are_exclusive(tmp_path):
    with pytest.raises(UserError, match="exactly one of 'parent'"):
        load_layer(make_layer(tmp_path, "web", "parent: base\nfrom: docker.io/library/debian:12\n"))
    with pytest.raises(UserError, match="exactly one of 'parent'"):
        load_layer(make_layer(tmp_path, "other", "description: nothing\n"))


def test_missing_containerfile(tmp_path):
    with pytest.raises(UserError, match="no Containerfile"):
        load_layer(make_layer(tmp_path, "web", "parent: base\n", containerfile=False))


def test_invalid_yaml_names_file(tmp_path):
    path = make_layer(tmp_path, "web", "parent: [base\n")
    with pytest.raises(UserError, match="not valid YAML") as err:
        load_layer(path)
    assert str(path) in err.value.message


def test_wrong_type(tmp_path):
    with pytest.raises(UserError, match="'build_args' must be a dict"):
        load_layer(make_layer(tmp_path, "web", "parent: base\nbuild_args: [a, b]\n"))


def test_cli_overrides_layer_defaults(tmp_path):
    layer = load_layer(make_layer(tmp_path, "web", "parent: base\nexport:\n  firmware: uefi\n  hostname: a\n"))
    merged = layer.export.merged({"firmware": "bios", "hostname": None})
    assert merged.firmware == "bios" and merged.hostname == "a"


@pytest.mark.parametrize("key,value", [("hostname", "bad_name!"), ("user", "Root User"), ("label", "lower")])
def test_invalid_option_values(key, value):
    with pytest.raises(UserError, match=f"export.{key}"):
        ExportOptions().merged({key: value})


@pytest.mark.parametrize("name", ["../../evil", "a/b", "Server"])
def test_artifact_names_cannot_leave_the_output_directory(name):
    with pytest.raises(UserError, match="export.name"):
        ExportOptions().merged({"name": name})


@pytest.mark.parametrize("text,epoch", [("2024-01-02T03:04:05-05:00", 1704182645),
                                        ("2026-11-25T19:51:23.123456789Z", 1795636283),
                                        ("2026-11-25 19:51:23.123456789 +0000 UTC", 1795636283)])
def test_engine_creation_times(text, epoch):
    from openos365.engine.base import parse_created

    assert parse_created(text) == epoch


def test_unreadable_creation_time_is_a_user_error():
    from openos365.engine.base import parse_created

    with pytest.raises(UserError, match="creation time"):
        parse_created("yesterday")
