"""Class lists: validation, class files with synonyms, and archive-safe names for them.

A class file (``--classes @classes.txt``) holds one class per line; ``#`` starts a comment, blank lines are
ignored, and ``name: prompt1; prompt2`` gives the prompts (synonyms) that stand for the class in the text tower:
its embedding is the mean of the synonyms' template-averaged embeddings
(:meth:`~dinoseg_core.ovseg.dinotxt.DinoTxt.embed_classes`). The same ``name: prompt1; prompt2`` form is accepted
in a list of classes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dinoseg_core.errors import InputError

__all__ = ["IMAGENET_TEMPLATES", "ClassList", "concept_names", "parse_class_file", "parse_class_list",
           "require_background", "validate_class_names"]

#: The 80 prompt templates of CLIP's ImageNet zero-shot classifier (OpenAI's published list, in its order): the
#: prompt ensemble of Meta's dino.txt zero-shot recipe (``OvsegConfig(recipe="dinotxt")``).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

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


@dataclass(frozen=True)
class ClassList:
    """A validated class list.

    Attributes:
        names: the class names, in label order.
        synonyms: per class, the prompts that stand for it in the text tower (empty: the name itself).
    """

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]

    @property
    def prompts(self) -> dict[str, tuple[str, ...]]:
        """Class name -> its synonyms, for the classes that have some."""
        return {n: s for n, s in zip(self.names, self.synonyms) if s}


def _entry(entry: str, where: str) -> tuple[str, tuple[str, ...]]:
    """``"name"`` or ``"name: prompt1; prompt2"`` -> (name, prompts)."""
    if ":" not in entry:
        return entry, ()
    name, _, rest = entry.partition(":")
    if not name.strip():
        raise InputError(f"{where} {entry.strip()!r}: no class name before ':'; write 'name: prompt1; prompt2'")
    prompts = [" ".join(p.split()) for p in rest.split(";")]
    if not any(prompts) or not all(prompts):
        raise InputError(f"{where} {entry.strip()!r}: an empty prompt after ':' (or between ';'); write "
                         "'name: prompt1; prompt2', or just 'name'")
    return name, tuple(prompts)


def _class_list(entries: list[tuple[str, tuple[str, ...]]]) -> ClassList:
    names = validate_class_names([name for name, _ in entries])
    return ClassList(names, tuple(prompts for _, prompts in entries))


def parse_class_list(classes: Sequence[str] | str) -> ClassList:
    """A list of classes (or one comma-separated string), each ``name`` or ``name: prompt1; prompt2``.

    Raises:
        InputError: as :func:`validate_class_names`, or an entry with an empty name or prompt.
    """
    if isinstance(classes, str):
        classes = classes.split(",")
    if not isinstance(classes, Sequence):
        raise InputError(f"class names must be a list of strings, got {type(classes).__name__}")
    entries = [_entry(c, f"class #{i}") if isinstance(c, str) else (c, ()) for i, c in enumerate(classes)]
    return _class_list(entries)


def parse_class_file(text: str, source: str = "<classes>") -> ClassList:
    """The classes of a class file's text (see the module docstring).

    Raises:
        InputError: a bad line (empty name or prompt), named with its line number; no class at all; duplicates.
    """
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(_entry(line, f"{source}: line {number}"))
    if not entries:
        raise InputError(f"{source}: no class in the file; write one class per line ('#' starts a comment)")
    try:
        return _class_list(entries)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None


def require_background(names: Sequence[str], options: Mapping[str, object]) -> None:
    """Refuse a single class without a background option: with nothing to compete with, it wins every pixel.

    Args:
        names: the class names; options: :class:`~dinoseg_core.ovseg.OvsegConfig` fields given.
    """
    if len(names) == 1 and options.get("background_threshold") is None and not options.get("background_prompts"):
        raise InputError(
            f"one class ({names[0]!r}) and no background option: the classes compete for every pixel, so a single "
            "class would cover every image. Add --background-threshold 0.5 (options.background_threshold), or "
            "--background-prompts grass road (options.background_prompts), or name a second class."
        )
