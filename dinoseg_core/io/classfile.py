"""Class lists from the command line or a flow parameter: ``"@<url>"`` reads a class file from any storage; the
parsing (comments, ``name: prompt1; prompt2`` synonyms) is :mod:`dinoseg_core.ovseg.classes`'s. Imports neither
torch nor Prefect, so the command line checks a class file before any server starts."""

from __future__ import annotations

from typing import Any

from dinoseg_core.errors import InputError, StorageError
from dinoseg_core.io import storage
from dinoseg_core.ovseg.classes import ClassList, parse_class_file, parse_class_list

__all__ = ["read_classes"]


def read_classes(classes: list[str] | str, storage_options: dict[str, Any] | None = None) -> ClassList:
    """The class list of a flow's or command's ``classes``: ``"@<url>"`` reads a class file (any fsspec URL; see
    :mod:`dinoseg_core.ovseg.classes`), anything else is a list or a comma-separated string.

    Raises:
        InputError: the class file cannot be read, or the list is invalid (bad lines named with their number).
    """
    if isinstance(classes, str) and classes.startswith("@"):
        url = classes[1:]
        shown = storage.display_url(url)
        try:
            data = storage.read_bytes(url, storage_options)
        except (OSError, StorageError) as exc:
            raise InputError(f"class file {shown}: cannot read it ({exc}); give an existing file after '@'") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"class file {shown}: not UTF-8 text ({exc})") from None
        return parse_class_file(text, shown)
    return parse_class_list(classes)
