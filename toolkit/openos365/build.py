"""Build a layer chain with the engine, and bootstrap base images from a distribution archive."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import log
from .config import LayerConfig
from .engine import BuildRequest, Engine, ImageInfo
from .errors import UserError
from .layers import chain
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
                      workdir: Path) -> BuiltImage:
    layers = chain(layer_dir)
    parent_ref: str | None = None
    built: BuiltImage | None = None
    for layer in layers:
        if layer.parent is None:
            parent_ref = ensure_base_image(layer, engine, workdir=workdir)
        assert parent_ref is not None
        built = build_one(layer, parent_ref, engine, cache_from=cache_from, cache_to=cache_to,
                          no_cache=no_cache)
        parent_ref = built.info.id
    assert built is not None
    return built


def ensure_base_image(layer: LayerConfig, engine: Engine, *, workdir: Path) -> str:
    """The `from:` image of a root layer: local, else bootstrapped from its recipe, else pulled."""
    assert layer.base_image is not None
    if engine.exists(layer.base_image):
        return engine.inspect(layer.base_image).id
    if layer.bootstrap:
        recipe = project_root(layer.directory) / "Containerfiles" / layer.bootstrap
        bootstrap(recipe, engine, workdir=workdir, expected_ref=layer.base_image)
    else:
        engine.pull(layer.base_image)
    return engine.inspect(layer.base_image).id


def build_one(layer: LayerConfig, parent_ref: str, engine: Engine, *, cache_from: str | None,
              cache_to: str | None, no_cache: bool) -> BuiltImage:
    tags = [f"{layer.image}:{tag}" for tag in layer.tags]
    args = {**layer.build_args, "PARENT": parent_ref}
    with log.step(f"Building layer {layer.name}"):
        image_id = engine.build(
            BuildRequest(containerfile=layer.containerfile, context=layer.directory, tags=tags,
                         build_args=args, cache_from=cache_from, cache_to=cache_to, no_cache=no_cache))
        content_tag = f"{layer.image}:{image_id[:12]}"
        engine.tag(image_id, content_tag)
        info = engine.inspect(image_id)
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


_RECIPE_KEYS = {"tool", "image", "suite", "mirror", "variant", "components", "include", "setup_hooks",
                "changes", "description"}


def load_recipe(recipe_dir: Path) -> BootstrapRecipe:
    path = recipe_dir / "bootstrap.yaml"
    if not path.is_file():
        raise UserError(f"{recipe_dir}: no bootstrap.yaml",
                        hint="recipes live in Containerfiles/<name>/bootstrap.yaml; see Containerfiles/README.md")
    data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    for key in data:
        if key not in _RECIPE_KEYS:
            raise UserError(f"{path}: unknown key '{key}'", hint=f"known keys: {', '.join(sorted(_RECIPE_KEYS))}")
    if data.get("tool", "mmdebstrap") != "mmdebstrap":
        raise UserError(f"{path}: tool '{data['tool']}' is not supported", hint="use tool: mmdebstrap")
    for key in ("image", "suite"):
        if key not in data:
            raise UserError(f"{path}: '{key}' is required")
    return BootstrapRecipe(
        name=recipe_dir.name, image=str(data["image"]), suite=str(data["suite"]),
        mirror=str(data.get("mirror", "http://deb.debian.org/debian")), variant=str(data.get("variant", "minbase")),
        components=tuple(data.get("components", ["main"])), include=tuple(data.get("include", [])),
        setup_hooks=tuple(data.get("setup_hooks", [])), changes=tuple(data.get("changes", [])),
    )


def bootstrap(recipe_dir: Path, engine: Engine, *, workdir: Path, expected_ref: str | None = None) -> str:
    """mmdebstrap -> rootfs tar -> engine import. No registry needed; SOURCE_DATE_EPOCH is honoured."""
    recipe = load_recipe(recipe_dir)
    if expected_ref and expected_ref != recipe.image:
        raise UserError(f"{recipe_dir}/bootstrap.yaml makes '{recipe.image}', but the layer wants "
                        f"'{expected_ref}'", hint="make the layer's `from:` and the recipe's `image:` agree")
    workdir.mkdir(parents=True, exist_ok=True)
    tarball = workdir / f"bootstrap-{recipe.name}.tar"
    argv = ["mmdebstrap", f"--variant={recipe.variant}", f"--components={','.join(recipe.components)}",
            "--format=tar"]
    if recipe.include:
        argv.append(f"--include={','.join(recipe.include)}")
    for hook in recipe.setup_hooks:
        argv.append(f"--customize-hook={hook}")
    argv += [recipe.suite, str(tarball), recipe.mirror]
    with log.step(f"Bootstrapping {recipe.image} from {recipe.mirror} ({recipe.suite})"):
        try:
            run(argv, step="mmdebstrap", hint="check that the mirror is reachable (apt-get update works) "
                "and that mmdebstrap is installed (apt-get install mmdebstrap)")
            image_id = engine.import_tarball(tarball, recipe.image, list(recipe.changes))
        finally:
            tarball.unlink(missing_ok=True)
    log.info(f"bootstrapped {recipe.image} sha256:{image_id}")
    return image_id


def source_date_epoch(default: int) -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return default
    if not value.isdigit():
        raise UserError(f"SOURCE_DATE_EPOCH='{value}' is not a number of seconds",
                        hint="unset it or set it to e.g. $(git log -1 --format=%ct)")
    return int(value)
