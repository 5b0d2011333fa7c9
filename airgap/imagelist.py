"""The image list: YAML, or plain text with one reference per line.

Every problem names the file and line, so a user can fix a long list quickly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from airgap.descriptor import Platform
from airgap.errors import AirgapError, ImageListError, UsageError
from airgap.reference import Reference

DEFAULT_REGISTRY_IMAGE = "docker.io/library/registry:2"
_TOP_KEYS = {"registry-image", "platforms", "images"}
_ENTRY_KEYS = {"name", "target", "platforms", "source"}
_SOURCES = ("registry", "docker")
_NO_IMAGES = "list at least one image; the registry image is added to them"


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    reference: Reference
    target: str | None = None
    platforms: tuple[Platform, ...] | None = None
    source: str = "registry"
    line: int | None = None
    is_registry_image: bool = False

    @property
    def target_name(self) -> str:
        """Its name on the isolated side: ``target``, else the source repository
        with its tag (a digest-only image has no tag and is pushed by digest)."""
        if self.target:
            return self.target
        ref = self.reference
        return f"{ref.repository}:{ref.tag}" if ref.tag else ref.repository


@dataclasses.dataclass(frozen=True)
class ImageList:
    path: str
    images: tuple[ImageEntry, ...]
    registry_image: Reference | None
    platforms: tuple[Platform, ...] | None = None

    def all_entries(self) -> list[ImageEntry]:
        """The listed images, plus the registry image when it is not listed."""
        entries = list(self.images)
        if self.registry_image is None:
            return entries
        for i, entry in enumerate(entries):
            if entry.reference == self.registry_image:
                entries[i] = dataclasses.replace(entry, is_registry_image=True)
                return entries
        entries.append(ImageEntry(self.registry_image, is_registry_image=True))
        return entries


def load(path: str) -> ImageList:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot read image list {path}: {exc.strerror}",
            "pass the path of a YAML or text file listing images",
        ) from exc
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"image list {path} is not UTF-8 text (byte {exc.start})",
            "pass a YAML or text file listing images, not a bundle or binary",
        ) from exc
    return parse(text, path)


def parse(text: str, path: str = "<image list>") -> ImageList:
    if _looks_like_yaml(text, path):
        return _parse_yaml(text, path)
    return _parse_text(text, path)


def _looks_like_yaml(text: str, path: str) -> bool:
    if path.endswith((".yaml", ".yml")):
        return True
    if path.endswith(".txt"):
        return False
    try:
        return isinstance(yaml.safe_load(text), dict)
    except yaml.YAMLError:
        return False


def _parse_text(text: str, path: str) -> ImageList:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(ImageEntry(_reference(line, path, number), line=number))
    if not entries:
        raise ImageListError(path, None, "the image list names no images", _NO_IMAGES)
    return _finish(path, entries, Reference.parse(DEFAULT_REGISTRY_IMAGE), None)


def _parse_yaml(text: str, path: str) -> ImageList:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = f"not valid YAML: {_yaml_problem(exc)}"
        raise ImageListError(path, line, problem) from exc
    if root is None:
        raise ImageListError(path, None, "the image list is empty")
    top = _mapping(
        root, path, _TOP_KEYS, "the image list must be a mapping with 'images:'"
    )
    platforms = _platforms(top.get("platforms"), path)
    registry_image = _registry_image(top.get("registry-image"), path)
    images = top.get("images")
    if images is None:
        raise ImageListError(path, _line(root), "missing 'images:'")
    if not isinstance(images, yaml.SequenceNode):
        raise ImageListError(path, _line(images), "'images' must be a list")
    if not images.value:
        raise ImageListError(path, _line(images), "'images' is empty", _NO_IMAGES)
    # An entry keeps only its own platforms: the list-wide ones apply after a
    # pack --platform, which is decided later (per image, then CLI, then list).
    entries = [_entry(node, path) for node in images.value]
    return _finish(path, entries, registry_image, platforms)


def _entry(node: yaml.Node, path: str) -> ImageEntry:
    line = _line(node)
    if isinstance(node, yaml.ScalarNode):
        return ImageEntry(_reference(node.value, path, line), line=line)
    fields = _mapping(
        node, path, _ENTRY_KEYS, "an image is a reference or a mapping with 'name:'"
    )
    if "name" not in fields:
        raise ImageListError(path, line, "image entry without 'name:'")
    target = _scalar(fields.get("target"), path)
    if target is not None:
        _target(target, path, _line(fields["target"]))
    source = _scalar(fields.get("source"), path) or "registry"
    if source not in _SOURCES:
        raise ImageListError(
            path,
            _line(fields["source"]),
            f"unknown source {source!r}",
            "source is 'registry' (the default) or 'docker'",
        )
    platforms = _platforms(fields.get("platforms"), path)
    return ImageEntry(
        reference=_reference(_scalar(fields["name"], path) or "", path, line),
        target=target,
        platforms=platforms,
        source=source,
        line=line,
    )


def _finish(
    path: str,
    entries: list[ImageEntry],
    registry_image: Reference | None,
    platforms: tuple[Platform, ...] | None,
) -> ImageList:
    seen: dict[tuple[str, str | None], int | None] = {}
    for entry in entries:
        key = (str(entry.reference), entry.target)
        if key in seen:
            raise ImageListError(
                path,
                entry.line,
                f"duplicate entry {entry.reference} (first at line {seen[key]})",
                "list each image once",
            )
        seen[key] = entry.line
    images = ImageList(path, tuple(entries), registry_image, platforms)
    _check_targets(path, images.all_entries())
    return images


def _check_targets(path: str, entries: list[ImageEntry]) -> None:
    """Two images tagged with one name on the isolated side would overwrite each
    other there; the registry image, added without a line, counts too."""
    owners: dict[str, ImageEntry] = {}
    for entry in entries:
        name = entry.target_name
        first = owners.setdefault(name, entry)
        if first is entry or ":" not in name.rsplit("/", 1)[-1]:
            continue
        if entry.line is None:  # the registry image comes last
            problem = f"{first.reference} and the registry image {entry.reference}"
        else:
            problem = f"{entry.reference} and {first.reference} (line {first.line})"
        raise ImageListError(
            path,
            entry.line or first.line,
            f"{problem} both land as {name}",
            "give one of them a 'target:' of its own",
        )


def _reference(text: str, path: str, line: int | None) -> Reference:
    try:
        return Reference.parse(text)
    except AirgapError as exc:
        raise ImageListError(path, line, exc.message, exc.hint) from exc


def _target(text: str, path: str, line: int | None) -> None:
    if text.startswith("/") or "@" in text:
        raise ImageListError(
            path, line, f"invalid target {text!r}", "write a name like backend/api:v1"
        )
    _reference(f"target.invalid/{text}", path, line)


def _registry_image(node: yaml.Node | None, path: str) -> Reference | None:
    if node is None:
        return Reference.parse(DEFAULT_REGISTRY_IMAGE)
    value = yaml.safe_load(yaml.serialize(node))
    if value is False:
        return None
    if not isinstance(value, str):
        raise ImageListError(
            path, _line(node), "'registry-image' must be a reference or false"
        )
    return _reference(value, path, _line(node))


def _platforms(node: yaml.Node | None, path: str) -> tuple[Platform, ...] | None:
    if node is None:
        return None
    if isinstance(node, yaml.ScalarNode):
        items = [node]
    elif isinstance(node, yaml.SequenceNode):
        items = node.value
    else:
        raise ImageListError(path, _line(node), "'platforms' must be a list")
    out = []
    for item in items:
        try:
            out.append(Platform.parse(_scalar(item, path) or ""))
        except AirgapError as exc:
            raise ImageListError(path, _line(item), exc.message, exc.hint) from exc
    return tuple(out)


def _mapping(
    node: yaml.Node, path: str, allowed: set[str], problem: str
) -> dict[str, yaml.Node]:
    """A mapping's values by key; duplicate and unknown keys are caught here
    because only here are the key nodes, and so their lines, at hand."""
    if not isinstance(node, yaml.MappingNode):
        raise ImageListError(path, _line(node), problem)
    out: dict[str, yaml.Node] = {}
    for key, value in node.value:
        name = _scalar(key, path) or ""
        if name in out:
            raise ImageListError(path, _line(key), f"duplicate key {name!r}")
        if name not in allowed:
            raise ImageListError(
                path,
                _line(key),
                f"unknown key {name!r}",
                f"known keys here: {', '.join(sorted(allowed))}",
            )
        out[name] = value
    return out


def _scalar(node: yaml.Node | None, path: str) -> str | None:
    if node is None:
        return None
    if not isinstance(node, yaml.ScalarNode):
        raise ImageListError(path, _line(node), "expected a single value here")
    return str(node.value)


def _line(node: Any) -> int | None:
    mark = getattr(node, "start_mark", None)
    return mark.line + 1 if mark is not None else None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    return str(problem) if problem else str(exc).splitlines()[0]
