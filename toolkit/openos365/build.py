"""Build a layer chain with the engine, and bootstrap base images from a distribution archive."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import arch as arches
from . import log
from .config import LayerConfig, load_yaml_mapping
from .engine import BuildRequest, Engine, ImageInfo, check_ref
from .engine.base import repository
from .errors import CommandError, OpenOSError, UserError, shown
from .layers import chain
from .reuse import BuildRecords, context_key
from .runner import run


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    info: ImageInfo
    layer: LayerConfig | None = None


def project_root(layer_dir: Path) -> Path:
    """The directory holding layers/ and Containerfiles/ (the layer dir's grandparent)."""
    return layer_dir.resolve().parent.parent


def build_layer_chain(layer_dir: Path, engine: Engine, *, cache_from: str | None = None,
                      cache_to: str | None = None, no_cache: bool = False,
                      workdir: Path, base: str | None = None, arch: str | None = None) -> BuiltImage:
    target = arches.get(arch) if arch else None
    layers = variant_layers(layer_dir, base, target)
    if target is not None:
        arches.require_emulation(target, "building")
    parent_ref: str | None = None
    built: BuiltImage | None = None
    records = None if no_cache or cache_from or cache_to else BuildRecords(workdir)
    for layer in layers:
        if layer.parent is None:
            assert layer.base_image is not None
            base_id = ensure_base_image(layer, engine, workdir=workdir, arch=target)
            parent_ref = engine.parent_arg(base_id, repository(layer.base_image))
        assert parent_ref is not None
        built = build_one(layer, parent_ref, engine, cache_from=cache_from, cache_to=cache_to,
                          no_cache=no_cache, records=records, arch=target)
        parent_ref = engine.parent_arg(built.info.id, layer.image)
    assert built is not None
    return built


def on_base(layers: list[LayerConfig], recipe_name: str) -> list[LayerConfig]:
    """The same layer tree built on another base recipe (--base debian-bookworm): the root layer starts from
    the recipe's image, and every layer is tagged with the recipe image's tag (server:bookworm), so the
    images of one release never replace another's."""
    root = layers[0]
    recipe_dir = project_root(root.directory) / "Containerfiles" / recipe_name
    if not (recipe_dir / "bootstrap.yaml").is_file():
        known = sorted(p.parent.name for p in recipe_dir.parent.glob("*/bootstrap.yaml"))
        raise UserError(f"--base {recipe_name}: no recipe {shown(recipe_dir)}/bootstrap.yaml",
                        hint=f"use one of: {', '.join(known) or 'none found'} (recipes live in Containerfiles/)")
    if root.parent is not None or root.bootstrap is None:
        raise UserError(f"--base {recipe_name}: the root layer {root.name} does not start from a recipe",
                        hint="--base replaces a root layer's 'bootstrap:'; this tree starts from "
                             f"{root.base_image}")
    recipe = load_recipe(recipe_dir)
    release = recipe.image.rpartition(":")[2] if ":" in recipe.image.rpartition("/")[2] else "latest"
    rebased = [dataclasses.replace(root, base_image=recipe.image, bootstrap=recipe_name)] + layers[1:]
    return [dataclasses.replace(layer, tags=(release,)) for layer in rebased]


def variant_layers(layer_dir: Path, base: str | None, target: arches.Arch | None) -> list[LayerConfig]:
    """The layer chain as built for --base and --arch."""
    layers = on_base(chain(layer_dir), base) if base else chain(layer_dir)
    return for_arch(layers, target) if target is not None else layers


def for_arch(layers: list[LayerConfig], target: arches.Arch) -> list[LayerConfig]:
    """The same layers built for another architecture (--arch arm64): their tags and a bootstrapped base
    image's tag say it (server:arm64, server:bookworm-arm64, debian:trixie-arm64), so the images of one
    architecture never replace another's. A pulled base keeps its name: the pull asks for the architecture."""
    suffix = arches.tag_suffix(target)
    if not suffix:
        return layers
    root = layers[0]
    if root.parent is None and root.bootstrap and root.base_image:
        layers = [dataclasses.replace(root, base_image=with_tag_suffix(root.base_image, suffix)), *layers[1:]]
    return [dataclasses.replace(layer, tags=tuple(arch_tag(tag, suffix) for tag in layer.tags)) for layer in layers]


def arch_tag(tag: str, suffix: str) -> str:
    """latest -> arm64, bookworm -> bookworm-arm64."""
    return suffix.lstrip("-") if tag == "latest" else f"{tag}{suffix}"


def with_tag_suffix(ref: str, suffix: str) -> str:
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return f"{ref}:{arch_tag('latest', suffix)}"
    return f"{repo}:{arch_tag(tag, suffix)}"


def variant_tag(layer_dir: Path, base: str | None, arch: str | None) -> str | None:
    """The tag a --base/--arch build gives the top layer (bookworm, arm64, bookworm-arm64); None without
    either. Artifacts carry it in their names: server-bookworm-arm64.qcow2."""
    target = arches.get(arch) if arch else None
    if not base and not (target and arches.tag_suffix(target)):
        return None
    return variant_layers(layer_dir, base, target)[-1].tags[0]


def release_of(recipe_name: str, layer_dir: Path) -> str:
    """The release a --base recipe names (its image's tag): bookworm for debian-bookworm."""
    return on_base(chain(layer_dir), recipe_name)[-1].tags[0]


def ensure_base_image(layer: LayerConfig, engine: Engine, *, workdir: Path, arch: arches.Arch | None = None) -> str:
    """The `from:` image of a root layer: local, else bootstrapped from its recipe, else pulled. With an
    architecture asked for, a local image of another one does not count."""
    assert layer.base_image is not None
    found = engine.find(layer.base_image)
    if found is not None and (arch is None or found.architecture in (None, arch.name)):
        return found.id
    if layer.bootstrap:
        recipe = project_root(layer.directory) / "Containerfiles" / layer.bootstrap
        bootstrap(recipe, engine, workdir=workdir, expected_ref=layer.base_image, arch=arch)
    else:
        try:
            engine.pull(layer.base_image, arch=arch.name if arch else None)
        except (CommandError, UserError) as exc:
            raise UserError(f"{shown(layer.directory / 'layer.yaml')}: from: {layer.base_image} does not exist "
                            f"locally and could not be pulled ({_pull_failure(exc)})",
                            hint="check the name; build or pull it first (openos365 pull IMAGE), or add "
                            "'bootstrap: RECIPE' to make it from a distribution archive (see Containerfiles/)"
                            ) from exc
    return engine.inspect(layer.base_image).id


def _pull_failure(exc: OpenOSError) -> str:
    """The engine's own reason for a failed pull, in one line."""
    if isinstance(exc, CommandError):
        reason = next((line.split("Error: ", 1)[1] for line in reversed(exc.tail) if "Error: " in line), "")
        return " ".join(reason.split()) or f"exit status {exc.returncode}"
    return exc.message.split(": ", 1)[-1]


def build_one(layer: LayerConfig, parent_ref: str, engine: Engine, *, cache_from: str | None,
              cache_to: str | None, no_cache: bool, records: BuildRecords | None = None,
              arch: arches.Arch | None = None) -> BuiltImage:
    tags = [f"{layer.image}:{tag}" for tag in layer.tags]
    args = {**layer.build_args, "PARENT": parent_ref}
    key = context_key(layer, parent_ref, engine.name, args)
    remembered = records.get(layer, key) if records else None
    if remembered is not None:
        current = engine.find(tags[0])
        if current is not None and current.id == remembered.id:
            log.info(f"{layer.name}: unchanged since its last build: {tags[0]} sha256:{remembered.id}")
            return BuiltImage(tags[0], current, layer)
    platform = f"linux/{arch.name}" if arch is not None and not arches.runs_natively(arch) else None
    request = BuildRequest(containerfile=layer.containerfile, context=layer.directory, tags=tags, build_args=args,
                           cache_from=cache_from, cache_to=cache_to, no_cache=no_cache, platform=platform)
    with log.step(f"Building layer {layer.name}"):
        try:
            image_id = engine.build(request)
        except CommandError as exc:
            raise CommandError(exc.argv, exc.returncode, exc.tail, step=exc.step, hint=exc.hint,
                               message=f"layer {layer.name}: {exc.message}") from exc
        content_tag = f"{layer.image}:{image_id[:12]}"
        engine.tag(image_id, content_tag)
        info = engine.inspect(image_id)
    if records is not None:
        records.put(layer, key, info)
    log.info(f"{layer.name}: {tags[0]} ({content_tag}) sha256:{image_id}")
    return BuiltImage(tags[0], info, layer)


@dataclass(frozen=True)
class BootstrapRecipe:
    name: str
    image: str
    suite: str
    mirror: str
    variant: str
    components: tuple[str, ...]
    include: tuple[str, ...]
    setup_hooks: tuple[str, ...]
    changes: tuple[str, ...]


DEFAULT_MIRROR = "http://deb.debian.org/debian"
_RECIPE_KEYS = {"tool", "image", "suite", "mirror", "variant", "components", "include", "setup_hooks",
                "changes", "description"}
_RECIPE_NEEDS = "a bootstrap.yaml needs at least 'image: NAME:TAG' and 'suite: SUITE' (see Containerfiles/README.md)"


def load_recipe(recipe_dir: Path) -> BootstrapRecipe:
    path = recipe_dir / "bootstrap.yaml"
    if not path.is_file():
        raise UserError(f"{shown(recipe_dir)}: no bootstrap.yaml",
                        hint="recipes live in Containerfiles/<name>/bootstrap.yaml; see Containerfiles/README.md")
    data = load_yaml_mapping(path, needs=_RECIPE_NEEDS)
    for key in data:
        if key not in _RECIPE_KEYS:
            raise UserError(f"{shown(path)}: unknown key '{key}'",
                            hint=f"known keys: {', '.join(sorted(_RECIPE_KEYS))}")
    if data.get("tool", "mmdebstrap") != "mmdebstrap":
        raise UserError(f"{shown(path)}: tool {data['tool']!r} is not supported", hint="use tool: mmdebstrap")
    for key in ("image", "suite"):
        if key not in data:
            raise UserError(f"{shown(path)}: '{key}' is required", hint=_RECIPE_NEEDS)
    suite, mirror = _recipe_value(path, data, "suite", ""), _recipe_value(path, data, "mirror", DEFAULT_MIRROR)
    for key, value in (("suite", suite), ("mirror", mirror)):
        if not value or value.startswith("-"):
            raise UserError(f"{shown(path)}: {key}: {value!r} is not valid",
                            hint="e.g. suite: bookworm, mirror: http://deb.debian.org/debian")
    return BootstrapRecipe(
        name=recipe_dir.name, image=check_ref(_recipe_value(path, data, "image", ""), where=f"{shown(path)}: image:"),
        suite=suite, mirror=mirror, variant=_recipe_value(path, data, "variant", "minbase"),
        components=_recipe_value(path, data, "components", ("main",)),
        include=_recipe_value(path, data, "include", ()), setup_hooks=_recipe_value(path, data, "setup_hooks", ()),
        changes=_recipe_value(path, data, "changes", ()),
    )


def _recipe_value(path: Path, data: dict[str, Any], key: str, default: Any) -> Any:
    """data[key] (or default) when it is of default's kind: a string, or a list of strings (as a tuple)."""
    value = data.get(key, default)
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        kind = "a string"
    else:
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return tuple(value)
        kind = "a list of strings"
    raise UserError(f"{shown(path)}: '{key}' must be {kind}, not {value!r}",
                    hint="quote values YAML reads as something else ('yes', '12'); see Containerfiles/README.md")


def bootstrap(recipe_dir: Path, engine: Engine, *, workdir: Path, expected_ref: str | None = None,
              arch: arches.Arch | None = None) -> str:
    """mmdebstrap -> rootfs tar -> engine import. No registry needed; SOURCE_DATE_EPOCH is honoured. For
    another architecture, mmdebstrap runs the packages' scripts through qemu-user."""
    recipe = load_recipe(recipe_dir)
    suffix = arches.tag_suffix(arch) if arch else ""
    image = with_tag_suffix(recipe.image, suffix) if suffix else recipe.image
    if expected_ref and expected_ref != image:
        raise UserError(f"{recipe_dir}/bootstrap.yaml makes '{image}', but the layer wants "
                        f"'{expected_ref}'", hint="make the layer's `from:` and the recipe's `image:` agree")
    if arch is not None:
        arches.require_emulation(arch, "bootstrapping")
    workdir.mkdir(parents=True, exist_ok=True)
    tarball = workdir / f"bootstrap-{recipe.name}{suffix}-{os.getpid()}.tar"
    argv = ["mmdebstrap", f"--variant={recipe.variant}", f"--components={','.join(recipe.components)}",
            "--format=tar"] + ([f"--architectures={arch.name}"] if arch else [])
    if recipe.include:
        argv.append(f"--include={','.join(recipe.include)}")
    for hook in recipe.setup_hooks:
        argv.append(f"--customize-hook={hook}")
    argv += [recipe.suite, str(tarball), recipe.mirror]
    what = f"{recipe.suite}, {arch.name}" if arch else recipe.suite
    with log.step(f"Bootstrapping {image} from {recipe.mirror} ({what})"):
        try:
            run(argv, step="mmdebstrap", hint="check that the mirror is reachable (apt-get update works) "
                "and that mmdebstrap is installed (apt-get install mmdebstrap"
                + (", and arch-test for another architecture)" if arch else ")"))
            image_id = engine.import_tarball(tarball, image, list(recipe.changes), arch=arch.name if arch else None)
        finally:
            tarball.unlink(missing_ok=True)
    log.info(f"bootstrapped {image} sha256:{image_id}")
    return image_id


def source_date_epoch(default: int) -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return default
    if not value.isdigit():
        raise UserError(f"SOURCE_DATE_EPOCH='{value}' is not a number of seconds",
                        hint="unset it or set it to e.g. $(git log -1 --format=%ct)")
    return int(value)
