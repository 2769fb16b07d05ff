"""The method's configurations, every default written once (``../shared/INSID3.md`` section 0), and the one place
that derives everything else from them.

- :class:`InsidConfig`: INSID3's hyper-parameters (the paper's defaults);
- :class:`SceneConfig`: how a large scene is windowed, put in context and stitched (:mod:`dinoseg_core.geo.scene`);
- :class:`ConfigBase`: what every frozen config dataclass of dinoseg shares (``replace``, ``to_dict``,
  ``from_dict``, ``digest``), also used by :mod:`dinoseg_core.ovseg.config`;
- :func:`options_model`: the pydantic "options" form of a config (every field optional, None keeps the default,
  unknown fields refused): flow parameters and manifest overrides (:data:`MethodOptions`, :data:`SceneOptions`);
- :func:`add_options` / :func:`given_options`: one ``--option`` per field of a config or a pydantic model, and the
  fields a user gave on the command line;
- :func:`apply_options`: a config with the fields set in an options model replaced.

Nothing here imports torch or Prefect: the command line's ``--help`` is built from this module alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Self

from dinoseg_core.errors import InputError

__all__ = [
    "DEFAULT_BACKBONE",
    "ConfigBase",
    "InsidConfig",
    "MethodOptions",
    "SceneConfig",
    "SceneOptions",
    "add_options",
    "apply_options",
    "given_options",
    "options_model",
]

#: The backbone of the paper's results (ViT-L/16, LVD-1689M): what every command and flow uses unless told.
DEFAULT_BACKBONE = "dinov3-vitl16"

#: SVD components used by the paper with the ViT-L backbone (C = 1024).
PAPER_SVD_COMPONENTS = 500
PAPER_EMBED_DIM = 1024


class ConfigBase:
    """Shared by dinoseg's frozen config dataclasses (``@dataclass(frozen=True) class X(ConfigBase)``).

    Each field's ``help`` metadata is what the command line shows; ``config_name`` is how errors name the config.
    """

    config_name: ClassVar[str] = ""

    @classmethod
    def _shown_name(cls) -> str:
        return cls.config_name or cls.__name__

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value, JSON-ready (tuples become lists)."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The config from :meth:`to_dict`'s form (lists become tuples); unknown fields are an :class:`InputError`."""
        known = sorted(f.name for f in fields(cls))  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"unknown {cls._shown_name()} field(s) {unknown}; known fields: {known}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def apply(self, given: dict[str, Any]) -> Self:
        """This config with the fields in ``given`` (:meth:`to_dict`'s form) replaced and validated; a config whose
        fields follow another (``OvsegConfig.recipe``) overrides it."""
        return type(self).from_dict({**self.to_dict(), **given})

    def digest(self) -> str:
        """Stable sha256 of the config, for cache keys and provenance."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def options_model(config: type, name: str, *, exclude: Iterable[str] = (), strict: bool = False) -> Any:
    """A pydantic model with every field of the config dataclass ``config`` optional (None: keep the default) and
    unknown fields refused: the typed form of a config in flow parameters and manifests, generated so the defaults
    stay written once. ``strict`` refuses coercion (``"0.5"`` for a float); leave it off where JSON lists must
    become tuples. :func:`apply_options` applies an instance to a config."""
    from pydantic import ConfigDict, create_model

    hints = typing.get_type_hints(config)
    spec = {f.name: (hints[f.name] | None, None) for f in fields(config) if f.name not in set(exclude)}
    model = create_model(name, __config__=ConfigDict(extra="forbid", strict=strict), **spec)
    model.__doc__ = f"{config.__name__} fields; each unset field keeps its default (see {config.__module__})."
    return model


def apply_options(config: ConfigBase, options: Any) -> Any:
    """``config`` with the fields set in ``options`` (an options model, a dict, or None) replaced and validated."""
    if options is None:
        return config
    given = options.model_dump(exclude_none=True) if hasattr(options, "model_dump") else dict(options)
    given = {k: v for k, v in given.items() if v is not None}
    return config.apply(given) if given else config


# ------------------------------------------------------------------------------------ command-line options

def _option_fields(source: type) -> list[tuple[str, Any, Any, str]]:
    """``(name, type hint, default, help)`` of each field of a config dataclass or a pydantic model."""
    if dataclasses.is_dataclass(source):
        hints = typing.get_type_hints(source)
        return [(f.name, hints[f.name], f.default, f.metadata.get("help", "")) for f in fields(source)]
    return [(name, f.annotation, f.default, f.description or "") for name, f in source.model_fields.items()]


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. {"anon": false}')
    return value


def _argument(hint: Any) -> dict[str, Any]:
    """argparse keywords for a field of type ``hint`` (``X | None`` is ``X``: None means "not given")."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(kinds) == 1:
            hint = kinds[0]
    origin = typing.get_origin(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": typing.get_args(hint)}
    if origin is tuple:
        return {"nargs": "+", "type": typing.get_args(hint)[0]}
    if origin is list:  # repeatable: --allow-reference-url A --allow-reference-url B
        return {"action": "append", "type": typing.get_args(hint)[0]}
    if hint is dict or origin is dict:
        return {"type": _json_object, "metavar": "JSON"}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"no command-line form for a field of type {hint!r}")


def _option_name(source: type, prefix: str, name: str) -> str:
    """A field's option without the dashes: ``prefix`` + the field's name, or the field's ``flag`` metadata, which
    names it whatever the prefix (``SceneConfig.radiometry`` is ``--radiometry``, not ``--scene-radiometry``)."""
    if dataclasses.is_dataclass(source):
        flag = next((f.metadata.get("flag") for f in fields(source) if f.name == name), None)
        if flag:
            return flag
    return prefix + name.replace("_", "-")


def _dest(source: type, prefix: str, name: str) -> str:
    return _option_name(source, prefix, name).replace("-", "_")


def _selected(source: type, exclude: Iterable[str], only: Iterable[str] | None) -> list[tuple[str, Any, Any, str]]:
    keep = None if only is None else set(only)
    return [f for f in _option_fields(source) if f[0] not in set(exclude) and (keep is None or f[0] in keep)]


def add_options(parser: argparse.ArgumentParser, source: type, title: str, *, prefix: str = "",
                exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> None:
    """One ``--<prefix><field>`` option per field of ``source`` (a config dataclass or a pydantic model), in an
    argument group ``title``: ``svd_components`` -> ``--svd-components``; bool -> ``--x/--no-x``, Literal ->
    choices, tuple -> one or more values, dict -> a JSON object. Every option defaults to None (not given), so
    :func:`given_options` returns only what the user typed and the config's own default stays the only one.
    A list field is a repeatable option named in the singular (``allow_reference_urls`` ->
    ``--allow-reference-url A --allow-reference-url B``; the plural is accepted too)."""
    group = parser.add_argument_group(title)
    for name, hint, default, help_text in _selected(source, exclude, only):
        shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
        if default is not None:  # a None default is explained by the help text ("None: cuda if available")
            help_text = f"{help_text} (default: {shown})"
        keywords = _argument(hint)
        flags = ["--" + _option_name(source, prefix, name)]
        if keywords.get("action") == "append" and name.endswith("s"):
            flags.insert(0, flags[0][:-1])
        group.add_argument(*flags, dest=_dest(source, prefix, name), default=None, help=help_text.replace("%", "%%"),
                           **keywords)


def given_options(args: argparse.Namespace, source: type, *, prefix: str = "", exclude: Iterable[str] = (),
                  only: Iterable[str] | None = None) -> dict[str, Any]:
    """The fields of ``source`` the user gave on the command line (field name -> value), as :func:`add_options`
    with the same arguments declared them."""
    given = {name: getattr(args, _dest(source, prefix, name), None) for name, *_ in _selected(source, exclude, only)}
    return {name: value for name, value in given.items() if value is not None}


# ------------------------------------------------------------------------------------------------ configs

@dataclass(frozen=True)
class InsidConfig(ConfigBase):
    """Hyper-parameters of INSID3 (Cuttano et al., CVPR 2026). Defaults are the paper's."""

    config_name: ClassVar[str] = "INSID3 config"

    image_size: int = field(default=1024, metadata={"help": "square input side in pixels (multiple of the patch size)"})
    svd_components: int | None = field(
        default=None,
        metadata={"help": "positional-basis rank k; default 500 for C=1024, scaled as round(C*500/1024) otherwise"},
    )
    tau: float = field(default=0.6, metadata={"help": "clustering similarity threshold (cut at cosine distance 1-tau)"})
    merge_threshold: float = field(default=0.2, metadata={"help": "alpha: keep clusters with cross*intra*area > alpha"})
    crf: bool = field(default=False, metadata={"help": "refine mask boundaries with a dense CRF"})
    basis_source: Literal["black", "noise"] = field(
        default="black", metadata={"help": "content-free image for the positional basis: black (code) or noise (paper)"}
    )
    resize_mode: Literal["square", "aspect"] = field(
        default="square", metadata={"help": "square resize (paper) or longer side to image-size, aspect kept"}
    )

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise InputError(f"image_size={self.image_size}: must be at least one patch (16 px)")
        if self.svd_components is not None and self.svd_components < 0:
            raise InputError(f"svd_components={self.svd_components}: must be >= 0")
        if not 0.0 < self.tau <= 1.0:
            raise InputError(f"tau={self.tau}: must be in (0, 1] (a cosine-similarity threshold)")
        if not 0.0 <= self.merge_threshold < 1.0:
            raise InputError(f"merge_threshold={self.merge_threshold}: must be in [0, 1)")
        if self.basis_source not in ("black", "noise"):
            raise InputError(f"basis_source={self.basis_source!r}: must be 'black' or 'noise'")
        if self.resize_mode not in ("square", "aspect"):
            raise InputError(f"resize_mode={self.resize_mode!r}: must be 'square' or 'aspect'")

    def resolved_svd_components(self, embed_dim: int) -> int:
        """k for a backbone of feature dimension ``embed_dim`` (section 0: k < C, scaled when not given)."""
        if self.svd_components is None:
            return round(embed_dim * PAPER_SVD_COMPONENTS / PAPER_EMBED_DIM)
        if self.svd_components >= embed_dim:
            raise InputError(
                f"svd_components={self.svd_components} is not smaller than the backbone's feature dimension "
                f"{embed_dim}: the projection would remove every direction. Use a value below {embed_dim} "
                f"(or leave it unset for round(C*500/1024) = {round(embed_dim * PAPER_SVD_COMPONENTS / PAPER_EMBED_DIM)})."
            )
        return self.svd_components


@dataclass(frozen=True)
class SceneConfig(ConfigBase):
    """How a large scene is windowed, put in context and stitched (:func:`dinoseg_core.geo.scene.segment_scene`)."""

    config_name: ClassVar[str] = "scene config"

    window_size: int | None = field(
        default=None, metadata={"help": "window side in scene pixels; default the model's image_size (full resolution)"}
    )
    overlap: int = field(default=128, metadata={"help": "minimum overlap of neighbouring windows in pixels"})
    global_context: bool = field(
        default=True, metadata={"help": "fuse a downscaled whole-scene pass into every window (local-global)"}
    )
    global_weight: float = field(
        default=0.5, metadata={"help": "weight of the whole-scene similarity in the fused similarity, in [0, 1]"}
    )
    context_size: int | None = field(
        default=None, metadata={"help": "longer side in px of the whole-scene pass; default the model's image_size"}
    )
    threshold: float = field(
        default=0.5, metadata={"help": "stitched foreground score at or above which a pixel is in the mask"}
    )
    radiometry: str = field(
        default="scene-percentile",
        metadata={"flag": "radiometry", "help": "how raster values become the model's 0..1 input (8-bit data is used as is unless fixed or "
                  "scale): scene-percentile (each scene's own 2-98% stretch), collection-percentile (one stretch "
                  "for the whole collection, kept in the archive for later runs), fixed:LOW,HIGH (or "
                  "LOW,HIGH;LOW,HIGH;LOW,HIGH per band), scale:FACTOR[,OFFSET], none (8-bit only)"},
    )

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value, JSON-ready. The default ``radiometry`` is left out, so that a default config's dict
        (and the config digest of masks labelled before radiometry was a choice) is unchanged; :meth:`from_dict`
        restores it."""
        out = super().to_dict()
        if out["radiometry"] == "scene-percentile":
            del out["radiometry"]
        return out

    def __post_init__(self) -> None:
        from dinoseg_core.io.radiometry import Radiometry

        # one spelling per radiometry ("FIXED:0,3000.0" is "fixed:0,3000"), so that equal choices digest equally
        object.__setattr__(self, "radiometry", str(Radiometry.parse(self.radiometry)))
        for name in ("window_size", "context_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 16):
                raise InputError(f"{name}={value!r}: must be an int of at least 16 px (or None for the default)")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 0:
            raise InputError(f"overlap={self.overlap!r}: must be an int >= 0 (pixels)")
        if self.window_size is not None and self.overlap >= self.window_size:
            raise InputError(f"overlap={self.overlap} must be smaller than window_size={self.window_size}")
        if not 0.0 <= self.global_weight <= 1.0:
            raise InputError(f"global_weight={self.global_weight}: must be in [0, 1]")
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold={self.threshold}: must be in (0, 1)")


#: INSID3 options as a flow parameter and a manifest's overrides (strict: a manifest's ``tau: "0.5"`` is an error).
MethodOptions = options_model(InsidConfig, "MethodOptions", strict=True)
#: Scene options as a flow parameter (:class:`SceneConfig`).
SceneOptions = options_model(SceneConfig, "SceneOptions")
