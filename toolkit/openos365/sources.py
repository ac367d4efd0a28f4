"""What a user names as the input of an export: a layer directory or any image reference.

- `layers/server`               build the chain (cache hits when unchanged), then use the image
- `localhost/openos365/server`  an image in the engine's local store
- `docker://host/repo:tag`      pulled through the engine first
- `oci-archive:F`, `docker-archive:F`, `oci:DIR`   read from disk, no engine needed
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import arch as arches
from . import log
from .build import build_layer_chain, source_date_epoch, variant_tag
from .config import ExportOptions, LayerConfig, artifact_name_from
from .engine import Engine, ImageInfo, detect
from .errors import UserError
from .layers import is_layer_dir
from .rootfs import ARCHIVE_PREFIXES, TreeCache, created_epoch, flatten_archive, flatten_engine_image, read_archive


@dataclass(frozen=True)
class Source:
    spec: str
    name: str                    # default artifact base name
    image_id: str
    ref: str | None              # engine reference, when the image is in the engine's store
    tree: Path | None            # flattened root tree (cached: never modify it); None for engine-only exports
    epoch: int                   # SOURCE_DATE_EPOCH used for everything derived from this image
    config: dict[str, Any]       # image config (Env, Entrypoint, Cmd, Labels)
    layer: LayerConfig | None
    engine: Engine | None

    @property
    def defaults(self) -> ExportOptions:
        return self.layer.export if self.layer else ExportOptions()


def name_from_ref(ref: str) -> str:
    last = ref.rstrip("/").split("/")[-1]
    return artifact_name_from(last.split("@")[0].split(":")[0] or "image")


def resolve_image(spec: str, *, engine_name: str | None, workdir: Path, pull: bool = True, tls_verify: bool = True,
                  base: str | None = None, arch: str | None = None
                  ) -> tuple[str, Engine, LayerConfig | None, ImageInfo]:
    """A layer dir or engine reference -> (engine ref, engine, layer, image). Builds or pulls as needed."""
    path = Path(spec)
    if path.is_dir() and not is_layer_dir(path):
        raise UserError(f"{spec}: a directory but not a layer (no layer.yaml)",
                        hint="give a layer directory like layers/server, or an image reference")
    if base and not is_layer_dir(path):
        raise UserError(f"--base {base}: {spec} is not a layer directory",
                        hint="--base picks the base recipe of a layer tree, e.g. layers/server --base debian-bookworm")
    engine = detect(engine_name)
    if is_layer_dir(path):
        built = build_layer_chain(path, engine, workdir=workdir, base=base, arch=arch)
        return built.ref, engine, built.layer, built.info
    ref = spec.removeprefix("containers-storage:")
    if ref.startswith("docker://"):
        ref = ref.removeprefix("docker://")
        if pull:
            engine.pull(ref, tls_verify=tls_verify, arch=arches.get(arch).name if arch else None)
    info = engine.require(ref)
    if arch and info.architecture and info.architecture != arches.get(arch).name:
        raise UserError(f"--arch {arch}: {ref} is an {info.architecture} image",
                        hint=f"pull the {arches.get(arch).name} one (openos365 pull --arch {arch} REF, or "
                             f"docker://REF), or leave --arch out")
    return ref, engine, None, info


def resolve(spec: str, *, engine_name: str | None, workdir: Path, tls_verify: bool = True,
            flatten: bool = True, base: str | None = None, arch: str | None = None) -> Source:
    """The source, built or pulled as needed, and (flatten=True) its flattened tree."""
    if spec.startswith(ARCHIVE_PREFIXES):
        image = read_archive(spec)
        epoch = _env_epoch()
        source = Source(spec, name_from_ref(image.path.name.split(".")[0]), image.id, None, None,
                        epoch if epoch is not None else created_epoch(image.config), image.config.get("config") or {},
                        None, None)
    else:
        ref, engine, layer, info = resolve_image(spec, engine_name=engine_name, workdir=workdir,
                                                 tls_verify=tls_verify, base=base, arch=arch)
        epoch = source_date_epoch(info.created)
        log.note(f"source {spec}: image {info.id[:12]}, SOURCE_DATE_EPOCH={epoch}")
        name = (f"{layer.name}-{layer.tags[0]}" if variant_tag(Path(spec), base, arch) else layer.name) if layer \
            else name_from_ref(ref)
        source = Source(spec, name, info.id, ref, None, epoch, info.config, layer, engine)
    return with_tree(source, workdir) if flatten else source


def with_tree(source: Source, workdir: Path) -> Source:
    """The source with its flattened tree (from the tree cache when it has it)."""
    if source.tree is not None:
        return source
    cache = TreeCache(workdir)
    if source.engine is None or source.ref is None:
        tree = flatten_archive(source.spec, source.epoch, cache)[0]
    else:
        tree = flatten_engine_image(source.engine, source.ref, source.image_id, source.epoch, cache, workdir)
    return dataclasses.replace(source, tree=tree)


def _env_epoch() -> int | None:
    return source_date_epoch(0) if "SOURCE_DATE_EPOCH" in os.environ else None
