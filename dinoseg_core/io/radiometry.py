"""Radiometry: how a raster's values become the method's ``[0, 1]`` input (``--radiometry``).

A pure parse/apply module (numpy only; reading is :mod:`dinoseg_core.io.raster`'s). Every radiometry comes down to
one ``(low, high)`` range per selected band: ``low`` maps to 0, ``high`` to 1, values outside are clipped. What
differs is where the ranges come from:

- ``scene-percentile`` (default): the 2nd-98th percentile of each band of each scene, so every scene is stretched
  on its own (``scene-percentile:1,99`` for other percentiles). 8-bit data is display-ready and used as is (/255).
- ``collection-percentile``: the same percentiles computed once from a bounded sample of every scene of the
  collection (:func:`percentile_ranges` over the pooled samples): one stretch for every scene of a run, stored in
  the archive's run log so that later runs reuse it. 8-bit data is used as is.
- ``fixed:LOW,HIGH``: one range for every band, or one per band: ``fixed:0,3000;0,2800;0,2500``.
- ``scale:FACTOR[,OFFSET]``: ``value * FACTOR + OFFSET``, clipped to ``[0, 1]`` (``scale:0.0001`` for surface
  reflectance x 10000); FACTOR > 0.
- ``none``: 8-bit data as is (/255); other data types are refused, since their range is not display-ready.

:meth:`Radiometry.parse` reads the text form (and names what is wrong); ``str()`` gives its canonical text,
which is what provenance and the config digest record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dinoseg_core.errors import InputError

__all__ = ["DEFAULT_PERCENTILES", "DEFAULT_RADIOMETRY", "EIGHT_BIT", "KINDS", "Radiometry", "percentile_ranges"]

Kind = Literal["scene-percentile", "collection-percentile", "fixed", "scale", "none"]
KINDS: tuple[str, ...] = ("scene-percentile", "collection-percentile", "fixed", "scale", "none")
#: The radiometry of a run that does not choose one (what dinoseg always did).
DEFAULT_RADIOMETRY = "scene-percentile"
#: Lower and upper percentile of the percentile stretches.
DEFAULT_PERCENTILES: tuple[float, float] = (2.0, 98.0)
#: The data type that is display-ready as it is (divided by 255).
EIGHT_BIT = "uint8"

Range = tuple[float, float]

_FORMS = ("scene-percentile[:LOW_PCT,HIGH_PCT], collection-percentile[:LOW_PCT,HIGH_PCT], fixed:LOW,HIGH (or one "
          "LOW,HIGH per band separated by ';'), scale:FACTOR[,OFFSET], none")


def _num(value: float) -> str:
    """A number's canonical text: ``3000`` rather than ``3000.0``, ``0.0001`` as Python writes it."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _numbers(text: str, what: str, spec: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"radiometry {spec!r}: {what} {text!r} is not a list of numbers separated by ','") from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"radiometry {spec!r}: {what} {text!r} must be finite numbers")
    return values


@dataclass(frozen=True)
class Radiometry:
    """A parsed ``--radiometry``.

    Attributes:
        kind: ``scene-percentile``, ``collection-percentile``, ``fixed``, ``scale`` or ``none``.
        percentiles: the percentile stretches' lower and upper percentile.
        ranges: ``fixed``: one ``(low, high)`` for every band, or one per band; ``collection-percentile``: the
            collection's ranges once computed (:meth:`with_ranges`; None until then, ``()`` for an all-8-bit
            collection); else None.
        factor, offset: ``scale``'s ``value * factor + offset``.
    """

    kind: Kind = "scene-percentile"
    percentiles: Range = DEFAULT_PERCENTILES
    ranges: tuple[Range, ...] | None = None
    factor: float = 1.0
    offset: float = 0.0

    # ---------------------------------------------------------------------------------------- text form
    @classmethod
    def parse(cls, text: str | Radiometry | None) -> Radiometry:
        """The radiometry of ``text`` (None: the default); an :class:`InputError` names the bad part and the
        accepted forms."""
        if isinstance(text, Radiometry):
            return text
        if text is None:
            return cls()
        if not isinstance(text, str):
            raise InputError(f"radiometry {text!r}: give a text, one of {_FORMS}")
        spec = text.strip()
        kind, sep, arg = (part.strip() for part in spec.partition(":"))
        kind = kind.lower()
        if kind not in KINDS:
            raise InputError(f"radiometry {text!r}: unknown kind {kind!r}; use one of {_FORMS}")
        if kind in ("scene-percentile", "collection-percentile"):
            if not sep:
                return cls(kind)
            pcts = _numbers(arg, "percentiles", text)
            if len(pcts) != 2 or not 0.0 <= pcts[0] < pcts[1] <= 100.0:
                raise InputError(f"radiometry {text!r}: percentiles {arg!r} must be LOW,HIGH with 0 <= LOW < HIGH "
                                 "<= 100, e.g. 2,98")
            return cls(kind, percentiles=(pcts[0], pcts[1]))
        if kind == "none":
            if sep:
                raise InputError(f"radiometry {text!r}: 'none' takes no value")
            return cls("none")
        if not arg:
            example = "fixed:0,3000" if kind == "fixed" else "scale:0.0001"
            raise InputError(f"radiometry {text!r}: {kind} needs a value, e.g. {example}")
        if kind == "scale":
            values = _numbers(arg, "FACTOR[,OFFSET]", text)
            if len(values) not in (1, 2):
                raise InputError(f"radiometry {text!r}: give FACTOR or FACTOR,OFFSET, e.g. scale:0.0001 or "
                                 "scale:0.0001,-0.1")
            if not values[0] > 0:
                raise InputError(f"radiometry {text!r}: FACTOR must be > 0 (value * FACTOR + OFFSET is clipped to "
                                 "0..1)")
            return cls("scale", factor=values[0], offset=values[1] if len(values) == 2 else 0.0)
        ranges = []
        for i, part in enumerate(arg.split(";"), 1):
            pair = _numbers(part.strip(), f"range {i}", text)
            if len(pair) != 2 or not pair[1] > pair[0]:
                raise InputError(f"radiometry {text!r}: range {i} {part.strip()!r} must be LOW,HIGH with HIGH > LOW, "
                                 "e.g. fixed:0,3000")
            ranges.append((pair[0], pair[1]))
        if len(ranges) not in (1, 3):
            raise InputError(f"radiometry {text!r}: give one LOW,HIGH for every band or three (one per selected "
                             f"band, separated by ';'), not {len(ranges)}")
        return cls("fixed", ranges=tuple(ranges))

    def __str__(self) -> str:
        """The canonical text (``parse(str(r))`` gives ``r`` back, but for a collection's computed ranges)."""
        if self.kind in ("scene-percentile", "collection-percentile"):
            if tuple(self.percentiles) == DEFAULT_PERCENTILES:
                return self.kind
            return f"{self.kind}:{_num(self.percentiles[0])},{_num(self.percentiles[1])}"
        if self.kind == "fixed":
            return "fixed:" + ";".join(f"{_num(lo)},{_num(hi)}" for lo, hi in self.ranges or ())
        if self.kind == "scale":
            return f"scale:{_num(self.factor)}" + (f",{_num(self.offset)}" if self.offset else "")
        return "none"

    @property
    def is_default(self) -> bool:
        """Whether this is the default (its absence from a config digest keeps the digests of older masks)."""
        return str(self) == DEFAULT_RADIOMETRY

    @property
    def needs_collection(self) -> bool:
        """A collection stretch whose ranges are not computed yet (:func:`percentile_ranges`, :meth:`with_ranges`)."""
        return self.kind == "collection-percentile" and self.ranges is None

    def with_ranges(self, ranges: Sequence[Sequence[float]]) -> Radiometry:
        """This collection stretch with its computed ranges (one per selected band; none for 8-bit collections)."""
        if self.kind != "collection-percentile":
            raise InputError(f"radiometry {self}: only collection-percentile takes computed ranges")
        pairs = tuple((float(lo), float(hi)) for lo, hi in ranges)
        if any(not hi > lo for lo, hi in pairs):
            raise InputError(f"collection ranges {pairs}: every range needs high > low")
        return Radiometry(self.kind, self.percentiles, pairs)

    def stamp(self) -> dict[str, object]:
        """What a mask's config records (and its digest compares): nothing for the default, else the canonical
        text, plus the computed ranges of a collection stretch."""
        if self.is_default:
            return {}
        out: dict[str, object] = {"radiometry": str(self)}
        if self.kind == "collection-percentile":
            out["radiometry_ranges"] = [list(r) for r in self.ranges] if self.ranges is not None else None
        return out

    # ---------------------------------------------------------------------------------------- ranges
    def band_ranges(self, dtype: str, bands: int, sample: Callable[[], Sequence[np.ndarray]] | None = None,
                    name: str = "the raster") -> tuple[Range, ...]:
        """``(low, high)`` per selected band of a raster of data type ``dtype``.

        Args:
            dtype: the raster's data type (``"uint8"``, ``"uint16"``, ``"float32"``, ...).
            bands: how many bands are selected.
            sample: for ``scene-percentile`` on non-8-bit data: returns each selected band's valid sample values.
            name: how errors name the raster.
        """
        eight_bit = dtype == EIGHT_BIT
        if self.kind == "none" or (eight_bit and self.kind in ("scene-percentile", "collection-percentile")):
            if not eight_bit:
                raise InputError(
                    f"radiometry 'none' takes 8-bit data as is, but {name} is {dtype}: choose how to scale it, e.g. "
                    "--radiometry scene-percentile, collection-percentile, fixed:LOW,HIGH or scale:FACTOR[,OFFSET]")
            return ((0.0, 255.0),) * bands
        if self.kind == "scene-percentile":
            if sample is None:
                raise InputError(f"radiometry {self} for {name}: no sample of the scene to compute percentiles from")
            return percentile_ranges([[values] for values in sample()], self.percentiles)
        if self.kind == "scale":
            return ((-self.offset / self.factor, (1.0 - self.offset) / self.factor),) * bands
        if self.kind == "collection-percentile" and self.ranges is None:
            raise InputError(f"radiometry {self} for {name}: the collection's stretch is not computed yet "
                             "(dinoseg_core.io.raster.collection_radiometry computes it)")
        if self.kind == "collection-percentile" and not self.ranges:
            raise InputError(f"radiometry {self}: the collection had no non-8-bit scene to compute its stretch from, "
                             f"but {name} is {dtype}; label it with its collection, or give --radiometry "
                             "fixed:LOW,HIGH or scale:FACTOR[,OFFSET]")
        ranges = tuple(self.ranges or ())
        if len(ranges) == 1:
            ranges = ranges * bands
        if len(ranges) != bands:
            raise InputError(f"radiometry {self} gives {len(ranges)} range(s) for {name}, but {bands} band(s) are "
                             f"selected: give one LOW,HIGH for all bands or one per selected band")
        return ranges

    @staticmethod
    def apply(array: np.ndarray, ranges: Sequence[Range], out: np.ndarray | None = None) -> np.ndarray:
        """``array`` ``(bands, h, w)`` mapped band by band from ``(low, high)`` to ``[0, 1]`` (clipped), float32.
        ``out`` may be ``array`` itself (float32) to work in place."""
        data = np.asarray(array)
        if data.ndim != 3 or data.shape[0] != len(ranges):
            raise InputError(f"radiometry: {len(ranges)} range(s) for an array of shape {data.shape}; expected "
                             "(bands, h, w) with one range per band")
        low = np.array([r[0] for r in ranges], np.float32)
        high = np.array([r[1] for r in ranges], np.float32)
        scale = (1.0 / (high - low))[:, None, None]  # float32 throughout, as dinoseg always scaled
        result = np.subtract(data, low[:, None, None], out=out, dtype=np.float32)
        result *= scale
        return np.clip(result, 0.0, 1.0, out=result)


def percentile_ranges(samples: Sequence[Sequence[np.ndarray]], percentiles: Range = DEFAULT_PERCENTILES
                      ) -> tuple[Range, ...]:
    """``(low, high)`` per band: the ``percentiles`` of each band's pooled valid values.

    ``samples[band]`` is a list of 1-D value arrays (one per scene, or one for a single scene); non-finite values
    are left out. An empty band gets ``(0, 1)``; a constant band ``(v, v + 1)`` (it maps to 0, no division by 0).
    """
    out = []
    for parts in samples:
        values = np.concatenate([np.asarray(p, np.float64).ravel() for p in parts]) if len(parts) else np.empty(0)
        values = values[np.isfinite(values)]
        if values.size == 0:
            out.append((0.0, 1.0))
            continue
        low, high = np.percentile(values, percentiles)
        if not high > low:
            high = low + 1.0
        out.append((float(low), float(high)))
    return tuple(out)
