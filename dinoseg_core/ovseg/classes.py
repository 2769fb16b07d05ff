"""Class lists: validation, and archive-safe names for them."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from dinoseg_core.errors import InputError

__all__ = ["concept_names", "validate_class_names"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _key(name: str) -> str:
    """Names that the tokenizer cannot tell apart (case, surrounding or repeated whitespace) compare equal."""
    return " ".join(unicodedata.normalize("NFC", name).split()).casefold()


def validate_class_names(names: Sequence[str] | str) -> tuple[str, ...]:
    """Check a class list and return it as a tuple of stripped names.

    Accepts a sequence of strings or one comma-separated string (``"building,road,water"``).

    Raises:
        InputError: the list is empty, a name is not a string or is empty/blank, or two names are the same once
            case and whitespace are ignored (``"Road"`` and ``"road "``); the message names the culprits.
    """
    if isinstance(names, str):
        names = names.split(",")
    if not isinstance(names, Sequence):
        raise InputError(f"class names must be a list of strings, got {type(names).__name__}")
    names = list(names)
    if not names:
        raise InputError("the class list is empty: name at least one class, e.g. ['building', 'road']")
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise InputError(f"class name #{i} is {name!r} ({type(name).__name__}); class names must be strings")
        if not name.strip():
            raise InputError(f"class name #{i} is empty ({name!r}) in {names!r}; remove it or name the class "
                             "(a trailing comma in 'a,b,' makes an empty name)")
        out.append(" ".join(name.split()))
    seen: dict[str, int] = {}
    for i, name in enumerate(out):
        key = _key(name)
        if key in seen:
            raise InputError(f"class names #{seen[key]} {out[seen[key]]!r} and #{i} {name!r} are duplicates (case and "
                             "whitespace are ignored); give each class once")
        seen[key] = i
    return tuple(out)


def concept_names(class_names: Sequence[str]) -> dict[str, str]:
    """Class name -> a name safe for the mask archive (``[A-Za-z0-9._-]``, starting with a letter or digit):
    ``"solar panel"`` -> ``"solar_panel"``. Distinct classes always get distinct names (a numeric suffix is added
    on collision)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in validate_class_names(class_names):
        base = _UNSAFE.sub("_", unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()).strip("._-")
        base = (base or "class")[:180]
        if not base[0].isalnum():
            base = "c" + base
        candidate, n = base, 2
        while candidate.lower() in used:
            candidate, n = f"{base}_{n}", n + 1
        used.add(candidate.lower())
        out[name] = candidate
    return out
