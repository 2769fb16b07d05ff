"""What several commands share: exit codes, one-line argument errors, the backbone and run options (generated
from :class:`tasks.options.RunOptions`), validation of option groups and of local paths.

Everything here runs before a command touches torch or Prefect, so a bad argument costs milliseconds.
"""

from __future__ import annotations

import argparse
import glob
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from dinoseg_core.config import DEFAULT_BACKBONE, add_options, apply_options, given_options
from dinoseg_core.errors import InputError
from tasks.options import RunOptions

# Exit codes (docs/reliability.md): 0 every item done; 1 some items failed (the others were written); 2 a bad
# argument, input or configuration (nothing done); 3 infrastructure: the Prefect server, storage unreachable or
# full, an internal error; 128 + the signal when stopped by one (130 Ctrl-C, 143 SIGTERM).
EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3

#: The run options of a command that runs the method without a flow (segment, basis, correspond, the trainer).
DEVICE_OPTIONS = ("device", "dtype", "storage_options")


class Parser(argparse.ArgumentParser):
    """An argument error is one line naming the fix, not the whole usage (commands have dozens of options)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def add_command(commands, name: str, handler: Callable[[argparse.Namespace], int], help: str) -> Parser:
    """The sub-command ``name`` run by ``handler``; its ``--help`` description is the handler's docstring."""
    parser = commands.add_parser(name, help=help, description=inspect.getdoc(handler))
    parser.set_defaults(handler=handler)
    return parser


def add_backbone_option(parser: argparse.ArgumentParser, default: str | None = DEFAULT_BACKBONE) -> None:
    parser.add_argument(
        "--backbone", default=default,
        help="preset (dinov3-vitl16, dinov3-vitl16-sat493m, ...), Hugging Face id, model directory or URL, Meta .pth "
        f"file, or random:<preset>[@seed] (default: {default})",
    )


def add_collection_options(parser: argparse.ArgumentParser) -> None:
    """``--images`` (what to label) and ``--archive`` (where the masks go) of the labelling commands."""
    parser.add_argument(
        "--images", required=True, nargs="+", metavar="IMAGES",
        help="the collection: a glob ('s3://bucket/tiles/**/*.png'), a folder or prefix (every image under it), a "
        "single file (scene.tif), or several image URLs; GeoTIFF/COG items (.tif) are labelled as scenes",
    )
    parser.add_argument("--archive", required=True, help="Zarr mask archive, path or URL (created if missing)")


def collection_images(args: argparse.Namespace) -> str | list[str]:
    """``--images`` as the flows take it (one string, or a list of several), local paths checked."""
    images = args.images[0] if len(args.images) == 1 else args.images
    require_local_images(images)
    return images


def add_run_options(parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
    """``--device``, ``--cache``, ``--workers``, ...: one option per :class:`RunOptions` field (or those in ``only``)."""
    add_options(parser, RunOptions, "device and storage" if only else "how it runs: device, storage, batching",
                only=only)


def run_options(args: argparse.Namespace, only: Iterable[str] | None = None) -> RunOptions:
    """The :class:`RunOptions` the user gave, validated (:class:`InputError` naming the option)."""
    return validated(RunOptions, given_options(args, RunOptions, only=only))


def validated(model: type, given: dict[str, Any], prefix: str = "") -> Any:
    """``model(**given)`` (a pydantic model), its errors as one :class:`InputError` naming the options."""
    from pydantic import ValidationError

    try:
        return model(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            flag = "--" + prefix + name.replace("_", "-")
            value = given.get(name)
            shown = "" if isinstance(value, dict) else f" {value!r}"  # a JSON object may hold secrets: not echoed
            problems.append(f"{flag}{shown}: {error['msg']}" if name in given else error["msg"])
        raise InputError("; ".join(problems)) from None


def config_options(args: argparse.Namespace, model: type, config: Any, prefix: str = "",
                   exclude: Iterable[str] = ()) -> Any:
    """The options model of ``config``'s fields the user gave (None if none), checked against the config's own
    rules (``--tau 1.5`` fails here, not in a worker)."""
    given = given_options(args, type(config), prefix=prefix, exclude=exclude)
    if not given:
        return None
    options = validated(model, given, prefix)
    apply_options(config, options)
    return options


def bands(text: str) -> list[int]:
    """``--bands 4,3,2``: 1-based band numbers, one (grey) or three (RGB)."""
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1-based band numbers separated by commas, e.g. 4,3,2")
    if len(numbers) not in (1, 3) or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or 3 band numbers, each >= 1, e.g. 4,3,2")
    return numbers


def local_path(url: str) -> str | None:
    """The path of a local URL (plain path or ``file://``), None for other protocols and ``random:`` specs."""
    if url.startswith("file://"):
        return url[len("file://"):]
    return None if "://" in url or url.startswith("random:") else url


def require_local(url: str | None, flag: str) -> None:
    """Refuse a local file or folder that does not exist (remote URLs are checked when read)."""
    path = local_path(url) if url else None
    if path is not None and not os.path.exists(path):
        raise InputError(f"{flag} {url!r}: no such file or folder; check the path")


def require_local_images(images: str | list[str], flag: str = "--images") -> None:
    """Each local glob must match something, each local file or folder must exist."""
    for url in [images] if isinstance(images, str) else images:
        path = local_path(url)
        if path is not None and any(ch in path for ch in "*?["):
            if not glob.glob(path, recursive=True):
                raise InputError(f"{flag} {url!r} matches no file; check the pattern")
        else:
            require_local(url, flag)
