"""Reference-set manifests: which (image, mask) pairs define each concept, and per-concept INSID3 settings.

A manifest is a YAML or JSON file on any fsspec URL (``.json`` files are read as JSON, anything else as YAML)::

    version: 1                          # optional; the only version there is
    description: rooftops and fields    # optional
    config: {image_size: 512}           # optional InsidConfig overrides for every concept
    concepts:
      roof:
        description: building roofs     # optional
        references:
          - {image: refs/a.png, mask: refs/a_mask.png}
          - {image: s3://other-bucket/b.tif, mask: s3://other-bucket/b_mask.png}
        config: {tau: 0.55}             # optional overrides for this concept (win over the top-level ones)
        scene: {global_weight: 0.25}    # optional scene options of this concept (GeoTIFF/COG scenes only)
      field:
        references:
          - {image: refs/c.png, mask: refs/c_mask.png}

``concepts`` may also be a list of ``{name: roof, references: [...], config: {...}}`` entries.

Rules (each violation is an :class:`~dinoseg_core.errors.InputError` naming the field path, e.g.
``concepts.roof.references[0].mask: field required``): at least one concept, at least one reference per
concept, no unknown fields (unknown config fields are named, with the known ones), no duplicate keys or
concept names (also not ones differing only in case, which collide on case-insensitive filesystems),
concept names of 1-100 characters from ``A-Z a-z 0-9 . _ -`` starting with a letter or digit (they become
archive paths), config values of the right type and range.

A concept's ``scene`` holds the :class:`~dinoseg_core.config.SceneConfig` fields that are a property of the
concept (:data:`SCENE_FIELDS`: ``global_context``, ``global_weight``, ``context_size``, ``threshold``); windowing
and radiometry are the run's. They apply on top of the run's scene config, except for fields the run sets
explicitly (``--scene-global-weight`` wins over every concept's, as ``--tau`` does over ``config``). They are not
part of the reference-set hash (tiles do not depend on them): a scene mask records its scene config in its config
digest, so changing one concept's ``scene`` relabels that concept's scenes only.

Relative URIs resolve against the folder holding the manifest, so a folder with ``refs.yaml`` and its images can
be copied to a bucket unchanged. Full URLs (``s3://...``) are kept; absolute paths (``/data/a.png``) are allowed
in local manifests only.

References stay within the manifest's own filesystem: the same protocol and, for a remote manifest, the same
bucket or host (a local manifest may name any local file). Anything else, e.g. ``file:///etc/passwd`` in a
manifest on S3 or ``s3://other-bucket/b.tif``, is refused before anything is read, unless it starts with one of
the URL prefixes given as ``allow_reference_urls`` (the run option of that name, ``--allow-reference-url``).

The reference-set hash (:func:`concept_hash`, :func:`manifest_hash`) covers concept names, the sha256 of every
reference image and mask *content*, and the effective config overrides; not the URIs. Moving the folder keeps
it; editing a mask, reordering references, or changing an override changes it. Masks in the archive record the
hash of their concept's reference set, so editing one concept relabels only that concept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import unquote

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from dinoseg_core.config import InsidConfig, MethodOptions, SceneConfig
from dinoseg_core.errors import InputError
from dinoseg_core.io import storage

__all__ = [
    "MANIFEST_VERSION",
    "SCENE_FIELDS",
    "ConceptSpec",
    "ReferenceManifest",
    "ReferencePair",
    "concept_hash",
    "load_manifest",
    "manifest_hash",
    "parse_manifest",
    "check_reference_origin",
    "reference_content_hashes",
    "resolve_uri",
]

MANIFEST_VERSION = 1
_CONCEPT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(InsidConfig))
#: The SceneConfig fields a concept may set in its ``scene`` mapping (the others are the run's: windowing, radiometry).
SCENE_FIELDS = ("global_context", "global_weight", "context_size", "threshold")


# ----------------------------------------------------------------------------------------------- value objects
@dataclass(frozen=True)
class ReferencePair:
    """One reference: an image and its binary mask, as absolute URLs (or absolute local paths)."""

    image_url: str
    mask_url: str


@dataclass(frozen=True)
class ConceptSpec:
    """A concept of a manifest.

    ``config_overrides`` are the effective InsidConfig overrides: the manifest's top-level ``config`` updated
    with the concept's own.
    """

    name: str
    references: tuple[ReferencePair, ...]
    config_overrides: dict[str, Any] = field(default_factory=dict, hash=False)
    description: str | None = None
    scene_overrides: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ReferenceManifest:
    """A validated manifest; ``concepts`` keeps the file's order."""

    url: str
    concepts: dict[str, ConceptSpec] = field(hash=False)
    config_defaults: dict[str, Any] = field(default_factory=dict, hash=False)
    version: int = MANIFEST_VERSION
    description: str | None = None

    def concept(self, name: str) -> ConceptSpec:
        """The concept called ``name``; InputError naming the known ones otherwise."""
        try:
            return self.concepts[name]
        except KeyError:
            raise InputError(
                f"Concept {name!r} is not in the manifest {storage.display_url(self.url)}; "
                f"it defines {sorted(self.concepts)}"
            ) from None

    def config_for(self, concept: str, base: InsidConfig | None = None) -> InsidConfig:
        """``base`` (default: the paper's InsidConfig) with the concept's effective overrides applied."""
        spec = self.concept(concept)
        base = base if base is not None else InsidConfig()
        try:
            return base.replace(**spec.config_overrides)
        except InputError as exc:
            raise InputError(f"{storage.display_url(self.url)}: concepts.{concept}.config: {exc}") from exc

    def scene_for(self, concept: str, base: SceneConfig | None = None) -> SceneConfig:
        """``base`` (default: the default SceneConfig) with the concept's ``scene`` overrides applied."""
        spec = self.concept(concept)
        base = base if base is not None else SceneConfig()
        try:
            return base.replace(**spec.scene_overrides)
        except InputError as exc:
            raise InputError(f"{storage.display_url(self.url)}: concepts.{concept}.scene: {exc}") from exc

    def reference_urls(self) -> list[str]:
        """Every image and mask URL, each once, in manifest order."""
        urls: dict[str, None] = {}
        for spec in self.concepts.values():
            for pair in spec.references:
                urls[pair.image_url] = None
                urls[pair.mask_url] = None
        return list(urls)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form with resolved URLs (for run logs and flow parameters)."""
        return {
            "url": self.url,
            "version": self.version,
            "description": self.description,
            "config": dict(self.config_defaults),
            "concepts": {
                name: {
                    "description": spec.description,
                    "references": [{"image": p.image_url, "mask": p.mask_url} for p in spec.references],
                    "config": dict(spec.config_overrides),
                    **({"scene": dict(spec.scene_overrides)} if spec.scene_overrides else {}),
                }
                for name, spec in self.concepts.items()
            },
        }


# ----------------------------------------------------------------------------------------- pydantic schema
_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_Overrides = MethodOptions  # every InsidConfig field, optional; unknown fields rejected


class _Reference(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    image: _Text
    mask: _Text


class _SceneOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    global_context: bool | None = None
    global_weight: float | None = None
    context_size: int | None = None
    threshold: float | None = None


class _Concept(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    references: list[_Reference] = Field(min_length=1)
    config: _Overrides = Field(default_factory=_Overrides)  # type: ignore[valid-type]
    scene: _SceneOverrides = Field(default_factory=_SceneOverrides)
    description: str | None = None


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: int = MANIFEST_VERSION
    description: str | None = None
    config: _Overrides = Field(default_factory=_Overrides)  # type: ignore[valid-type]
    concepts: dict[str, _Concept] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {value}; this dinoseg reads version {MANIFEST_VERSION}")
        return value

    @field_validator("concepts", mode="before")
    @classmethod
    def _list_form(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out: dict[str, Any] = {}
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise ValueError(f"entry [{i}] needs a 'name' (a list of concepts holds {{name, references}} entries)")
            entry = dict(entry)
            name = entry.pop("name")
            if name in out:
                raise ValueError(f"duplicate concept name {name!r} (entry [{i}])")
            out[name] = entry
        return out


def _name_problems(concepts: Any) -> list[str]:
    """Concept-name problems of the raw ``concepts`` mapping (checked apart from pydantic so that they are
    reported together with every other error)."""
    if not isinstance(concepts, Mapping):
        return []
    problems, folded = [], {}
    for name in concepts:
        if not isinstance(name, str) or not _CONCEPT_NAME.match(name):
            problems.append(
                f"concepts: concept name {name!r} is not allowed: use 1-100 characters from A-Z a-z 0-9 . _ - "
                "starting with a letter or digit (it becomes a path in the mask archive), e.g. 'solar_panel'"
            )
        elif name.lower() in folded:
            problems.append(
                f"concepts: duplicate concept name {name!r} (same as {folded[name.lower()]!r} ignoring case; they "
                "would collide on case-insensitive filesystems)"
            )
        else:
            folded[name.lower()] = name
    return problems


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "<top level>"


def _format_error(err: Mapping[str, Any]) -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    path = _format_loc(loc)
    if kind == "missing":
        return f"{path}: field required"
    if kind == "extra_forbidden":
        if len(loc) >= 2 and loc[-2] == "config":
            return f"{path}: unknown INSID3 config field {loc[-1]!r}; known fields: {', '.join(_CONFIG_FIELDS)}"
        if len(loc) >= 2 and loc[-2] == "scene":
            return (f"{path}: unknown per-concept scene field {loc[-1]!r}; known fields: {', '.join(SCENE_FIELDS)} "
                    "(windowing and radiometry are the run's: --scene-window-size, --scene-overlap, --radiometry)")
        return f"{path}: unknown field {loc[-1]!r}"
    if kind == "too_short" and loc and loc[-1] == "concepts":
        return f"{path}: at least one concept is needed"
    if kind == "too_short" and loc and loc[-1] == "references":
        return f"{path}: at least one {{image, mask}} reference is needed"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    return f"{path}: {msg[:1].lower()}{msg[1:]}"


# ------------------------------------------------------------------------------------------------- parsing
def _yaml_duplicates(text: str) -> list[str]:
    """``path: duplicate key ...`` for every mapping key defined twice (PyYAML would silently keep the last)."""
    problems: list[str] = []

    def walk(node: Any, loc: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = getattr(key_node, "value", None)
                line = key_node.start_mark.line + 1
                if isinstance(key, str):
                    if key in seen:
                        what = "concept name" if loc == ("concepts",) else "key"
                        problems.append(f"{_format_loc(loc)}: duplicate {what} {key!r} (lines {seen[key]} and {line})")
                    else:
                        seen[key] = line
                    walk(value_node, (*loc, key))
                else:
                    walk(value_node, loc)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    return problems


class _PairsDict(dict):
    duplicates: list[str]


def _json_pairs(pairs: list[tuple[str, Any]]) -> _PairsDict:
    out = _PairsDict()
    out.duplicates = []
    for key, value in pairs:
        if key in out:
            out.duplicates.append(key)
        out[key] = value
    return out


def _json_duplicates(doc: Any, loc: tuple[Any, ...] = ()) -> list[str]:
    problems = []
    if isinstance(doc, dict):
        for key in getattr(doc, "duplicates", []):
            what = "concept name" if loc == ("concepts",) else "key"
            problems.append(f"{_format_loc(loc)}: duplicate {what} {key!r}")
        for key, value in doc.items():
            problems.extend(_json_duplicates(value, (*loc, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            problems.extend(_json_duplicates(value, (*loc, i)))
    return problems


def _decode(data: bytes | str, url: str) -> Any:
    shown = storage.display_url(url)
    try:
        text = data.decode("utf-8-sig") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as exc:  # the position only: an error never shows the file's bytes
        raise InputError(
            f"{shown}: a manifest must be UTF-8 text (YAML or JSON); byte {exc.start:,} of {len(data):,} is not"
        ) from None
    is_json = url.split("?", 1)[0].lower().endswith(".json")
    try:
        if is_json:
            doc = json.loads(text, object_pairs_hook=_json_pairs)
            problems = _json_duplicates(doc)
        else:
            problems = _yaml_duplicates(text)
            doc = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{shown}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{shown}: not valid YAML: {problem}{where}") from exc
    if problems:
        raise InputError(f"Invalid reference manifest {shown}:\n  " + "\n  ".join(problems))
    return doc


def resolve_uri(manifest_url: str, ref: str) -> str:
    """``ref`` as written in the manifest at ``manifest_url``, made absolute.

    Full URLs (``scheme://...``) are returned unchanged; a relative ``ref`` is joined to the manifest's folder
    and normalised (``..`` allowed, but not above the bucket or filesystem root); an absolute path is accepted in
    a local manifest only.
    """
    ref = ref.strip()
    if "://" in ref or "::" in ref:
        return ref
    chain, _, inner = manifest_url.rpartition("::")
    chain = f"{chain}::" if chain else ""
    proto, sep, path = inner.partition("://")
    if not sep:  # plain local path
        proto, path = "", os.path.abspath(inner)
    local = proto in ("", "file", "local")
    if ref.startswith("/"):
        if not local:
            raise InputError(
                f"Reference {ref!r} in the remote manifest {storage.display_url(manifest_url)} is an absolute path; "
                "use a path relative to the manifest or a full URL (s3://bucket/key)"
            )
        joined = posixpath.normpath(ref)
    else:
        folder = posixpath.dirname(path)
        joined = posixpath.normpath(posixpath.join(folder, ref))
        if local:
            if not joined.startswith("/"):
                joined = "/" + joined
        else:
            root = path.split("/", 1)[0]  # the bucket (or first path part) must stay the same
            if not joined.startswith(root + "/"):
                raise InputError(
                    f"Reference {ref!r} in {storage.display_url(manifest_url)} points above {proto}://{root}; "
                    "use a full URL to reach another bucket"
                )
    return f"{chain}{proto}://{joined}" if proto else joined


_SAME_PROTOCOL = {"s3a": "s3", "gcs": "gs", "abfss": "abfs", "az": "abfs", "local": "file", "": "file"}


def _origin(url: str) -> tuple[str, str]:
    """(protocol, bucket or host) of ``url``'s innermost filesystem; ``("file", "")`` for local paths."""
    inner = url.rpartition("::")[2]
    proto, sep, path = inner.partition("://")
    proto = _SAME_PROTOCOL.get(proto.lower() if sep else "", proto.lower() if sep else "")
    if proto == "file":
        return proto, ""
    return proto, path.split("/", 1)[0].lower()


def _within(url: str, prefix: str) -> bool:
    """Whether ``url`` is ``prefix`` or below it, on a path boundary (``s3://b`` does not cover ``s3://b-2``)."""
    def norm(text: str) -> str:
        if "://" not in text and "::" not in text:
            return os.path.abspath(text)
        return text[len("file://"):] if text.startswith("file://") else text

    url, prefix = norm(url), norm(prefix)
    return url == prefix.rstrip("/") or url.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _dot_segments(url: str) -> bool:
    path = unquote(url.rpartition("::")[2].partition("://")[2] or url)
    return any(part in (".", "..") for part in path.replace("\\", "/").split("/")[1:])


def check_reference_origin(manifest_url: str, ref_url: str, allow_reference_urls: Sequence[str] = ()) -> None:
    """Refuse a (resolved) reference outside the manifest's own filesystem: another protocol, or for a remote
    manifest another bucket or host, unless ``ref_url`` starts with one of ``allow_reference_urls``. Nothing is
    read. Raises :class:`InputError` naming the reference and the option that would allow it."""
    if any(_within(ref_url, prefix) for prefix in allow_reference_urls or ()):
        if _dot_segments(ref_url):
            raise InputError(f"{storage.display_url(ref_url)}: '.' and '..' segments are not allowed in a full URL")
        return
    home, other = _origin(manifest_url), _origin(ref_url)
    if other == home and not (other[0] != "file" and _dot_segments(ref_url)):
        return
    where = "this machine's files" if home[0] == "file" else f"{home[0]}://{home[1]}"
    raise InputError(
        f"{storage.display_url(ref_url)} is outside the manifest's own storage ({where}); a manifest's references "
        "must stay there, and nothing was read. To allow it, give its URL prefix as the run option "
        "allow_reference_urls (--allow-reference-url PREFIX, repeatable)"
    )


def parse_manifest(data: bytes | str | Mapping[str, Any], url: str,
                   allow_reference_urls: Sequence[str] = ()) -> ReferenceManifest:
    """Validate manifest content (bytes/text of a YAML or JSON file, or an already-parsed dict) read from
    ``url``; relative URIs resolve against ``url``'s folder, and every reference must pass
    :func:`check_reference_origin`. See the module docstring for the format."""
    shown = storage.display_url(url)
    doc = data if isinstance(data, Mapping) else _decode(data, url)
    if not isinstance(doc, Mapping):
        raise InputError(
            f"Invalid reference manifest {shown}: expected a mapping with a 'concepts' key at the top level, got "
            f"{type(doc).__name__ if doc is not None else 'an empty document'}"
        )
    raw = doc.get("concepts")
    if isinstance(raw, list):  # the list form: names checked after pydantic turned it into a mapping
        raw = {e["name"]: e for e in raw if isinstance(e, Mapping) and isinstance(e.get("name"), str)}
    lines = _name_problems(raw)
    try:
        model = _Manifest.model_validate(dict(doc))
    except ValidationError as exc:
        lines += [_format_error(err) for err in exc.errors()]
    if lines:
        raise InputError(f"Invalid reference manifest {shown}:\n  " + "\n  ".join(lines)) from None

    defaults = model.config.model_dump(exclude_unset=True)
    problems = []
    try:
        InsidConfig().replace(**defaults)
    except InputError as exc:
        problems.append(f"config: {exc}")
    concepts: dict[str, ConceptSpec] = {}
    for name, concept in model.concepts.items():
        overrides = {**defaults, **concept.config.model_dump(exclude_unset=True)}
        try:
            InsidConfig().replace(**overrides)
        except InputError as exc:
            if f"config: {exc}" not in problems:
                problems.append(f"concepts.{name}.config: {exc}")
        scene = concept.scene.model_dump(exclude_none=True)
        try:
            SceneConfig().replace(**scene)
        except InputError as exc:
            problems.append(f"concepts.{name}.scene: {exc}")
        pairs = []
        for i, ref in enumerate(concept.references):
            try:
                pair = ReferencePair(resolve_uri(url, ref.image), resolve_uri(url, ref.mask))
                for resolved in (pair.image_url, pair.mask_url):
                    check_reference_origin(url, resolved, allow_reference_urls)
            except InputError as exc:
                problems.append(f"concepts.{name}.references[{i}]: {exc}")
                continue
            if pair.image_url == pair.mask_url:
                problems.append(f"concepts.{name}.references[{i}]: image and mask are the same file ({ref.image!r})")
            pairs.append(pair)
        concepts[name] = ConceptSpec(name, tuple(pairs), overrides, concept.description, scene)
    if problems:
        raise InputError(f"Invalid reference manifest {shown}:\n  " + "\n  ".join(problems))
    return ReferenceManifest(
        url=url, concepts=concepts, config_defaults=defaults, version=model.version, description=model.description
    )


def load_manifest(url: str, storage_options: dict[str, Any] | None = None,
                  allow_reference_urls: Sequence[str] = ()) -> ReferenceManifest:
    """Read and validate the manifest at ``url`` (local path or fsspec URL); references outside its own
    filesystem are refused unless they start with one of ``allow_reference_urls`` (:func:`check_reference_origin`).

    Raises:
        InputError: the content is not a valid manifest; the message names every bad field path.
        ObjectNotFoundError / StorageError: the manifest cannot be read.
    """
    url = str(os.fspath(url)).strip()
    if url and "://" not in url and "::" not in url:
        url = os.path.abspath(url)
    return parse_manifest(storage.read_bytes(url, storage_options), url, allow_reference_urls)


# -------------------------------------------------------------------------------------------------- hashing
def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def concept_hash(manifest: ReferenceManifest, concept: str, content_hashes: Mapping[str, str]) -> str:
    """sha256 identifying what a concept's masks depend on in the manifest: its name, the sha256 of each
    reference image and mask (in order) and its effective config overrides. URIs do not enter it.

    ``content_hashes`` maps every reference URL to the sha256 of its bytes (:func:`reference_content_hashes`).
    """
    spec = manifest.concept(concept)

    def content(url: str) -> str:
        value = content_hashes.get(url)
        if not isinstance(value, str) or not value:
            raise InputError(
                f"No content hash for {storage.display_url(url)} (concept {concept!r}); hash every reference "
                "with reference_content_hashes(manifest) first"
            )
        return value

    return _digest({
        "kind": "dinoseg-reference-set",
        "version": MANIFEST_VERSION,
        "concept": spec.name,
        "references": [[content(p.image_url), content(p.mask_url)] for p in spec.references],
        "config": spec.config_overrides,
    })


def manifest_hash(manifest: ReferenceManifest, content_hashes: Mapping[str, str]) -> str:
    """sha256 of the whole manifest: the :func:`concept_hash` of every concept, independent of concept order."""
    return _digest({
        "kind": "dinoseg-manifest",
        "version": MANIFEST_VERSION,
        "concepts": {name: concept_hash(manifest, name, content_hashes) for name in manifest.concepts},
    })


def reference_content_hashes(
    manifest: ReferenceManifest, storage_options: dict[str, Any] | None = None, max_workers: int = 8
) -> dict[str, str]:
    """Read every reference image and mask once and return ``{url: sha256 of its bytes}``.

    Raises ObjectNotFoundError / StorageError naming the first URL that cannot be read.
    """
    urls = manifest.reference_urls()

    def one(url: str) -> str:
        return hashlib.sha256(storage.read_bytes(url, storage_options)).hexdigest()

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(urls)))) as pool:
        return dict(zip(urls, pool.map(one, urls)))
