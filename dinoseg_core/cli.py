"""The ``dinoseg`` command line for the core method (no Prefect): ``segment`` and ``basis``.

The method options are generated from :class:`dinoseg_core.config.InsidConfig`, so the defaults live in one
place. ``flows.cli`` adds the pipeline commands (``label``, ``preview``) on top of this parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Sequence

from dinoseg_core.config import DEFAULT_BACKBONE, InsidConfig
from dinoseg_core.errors import DinosegError, InputError

log = logging.getLogger("dinoseg")


# Exit codes: 0 every target written; 1 some targets failed (the others were written); 2 nothing could be done.
EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per :class:`InsidConfig` field (``svd_components`` -> ``--svd-components``)."""
    hints = typing.get_type_hints(InsidConfig)
    group = parser.add_argument_group("INSID3 method options (defaults: the paper's)")
    for field in dataclasses.fields(InsidConfig):
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata.get('help', '')} (default: {field.default})"
        hint = hints[field.name]
        if hint is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(hint) is typing.Literal:
            group.add_argument(flag, dest=field.name, choices=typing.get_args(hint), default=None, help=help_text)
        else:
            kind = next(a for a in typing.get_args(hint) if a is not type(None)) if typing.get_args(hint) else hint
            group.add_argument(flag, dest=field.name, type=kind, default=None, help=help_text)


def given_options(args: argparse.Namespace) -> dict:
    """The method options the user gave on the command line (field name -> value)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(InsidConfig) if getattr(args, f.name) is not None}


def config_from_args(args: argparse.Namespace, base: InsidConfig | None = None) -> InsidConfig:
    """The config with every option the user gave on the command line applied."""
    return (base or InsidConfig()).replace(**given_options(args))


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone and storage")
    group.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="preset (dinov3-vitl16, dinov3-vitl16-sat493m, ...), Hugging Face id, model directory or URL, Meta .pth "
        f"file, or random:<preset>[@seed] (default: {DEFAULT_BACKBONE})",
    )
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="backbone dtype (default float32)")
    group.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        help='JSON object passed to fsspec for every URL, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'',
    )


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. {\"anon\": false}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinoseg", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    segment = commands.add_parser(
        "segment", help="segment a concept shown by reference images+masks in target images (INSID3)",
        description="Writes OUT/<target stem>.png (uint8 0/255, the target's size) for every target.",
    )
    segment.add_argument(
        "--reference", nargs=2, action="append", required=True, metavar=("IMAGE", "MASK"),
        help="a reference image and its mask (repeat for several shots); paths or fsspec URLs",
    )
    segment.add_argument(
        "--target", action="append", required=True, metavar="IMAGE",
        help="a target image, path/URL or glob pattern such as 's3://bucket/tiles/*.png' (repeatable)",
    )
    segment.add_argument("--out", required=True, help="output directory (path or fsspec URL)")
    segment.add_argument("--save-similarity", action="store_true", help="also write OUT/<stem>_similarity.npy")
    segment.add_argument("--basis", default=None, help="a positional basis saved by `dinoseg basis` (else computed)")
    segment.add_argument("--batch-size", type=int, default=4, help="targets per backbone pass (default 4)")
    add_backbone_options(segment)
    add_config_options(segment)
    segment.set_defaults(handler=run_segment)

    basis = commands.add_parser("basis", help="compute and save the positional basis of a backbone and input size")
    basis.add_argument("--out", required=True, help="output file (.safetensors), path or URL")
    add_backbone_options(basis)
    add_config_options(basis)
    basis.set_defaults(handler=run_basis)
    return parser


def _load_segmenter(args: argparse.Namespace):
    from dinoseg_core.backbone import load_backbone
    from dinoseg_core.segmenter import InContextSegmenter

    config = config_from_args(args)
    backbone = load_backbone(args.backbone, device=args.device, dtype=args.dtype, storage_options=args.storage_options)
    return InContextSegmenter(backbone, config)


def expand_targets(patterns: Sequence[str], storage_options: dict | None) -> list[str]:
    """Expand glob patterns; plain paths pass through. Refuses two targets with one output stem."""
    from dinoseg_core.io import storage

    urls: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = storage.glob(pattern, storage_options)
            if not matches:
                raise InputError(f"--target {pattern!r} matches no file")
            urls.extend(matches)
        else:
            urls.append(pattern)
    seen: dict[str, str] = {}
    for url in urls:
        name = storage.stem(url)
        if name in seen and seen[name] != url:
            raise InputError(f"targets {seen[name]!r} and {url!r} would both be written as {name}.png; rename one")
        seen[name] = url
    return list(dict.fromkeys(urls))


def run_segment(args: argparse.Namespace) -> int:
    import io

    import numpy as np
    from tqdm import tqdm

    from dinoseg_core.io import imageio, storage

    so = args.storage_options
    targets = expand_targets(args.target, so)
    segmenter = _load_segmenter(args)
    if args.basis:
        from dinoseg_core.basis import PositionalBasis

        segmenter.add_basis(PositionalBasis.from_bytes(storage.read_bytes(args.basis, so), name=args.basis))
    images = [imageio.read_image(image, so) for image, _ in args.reference]
    masks = [imageio.read_mask(mask, so) for _, mask in args.reference]
    references = segmenter.embed_references(images, masks, names=[image for image, _ in args.reference])
    log.info("embedded %d reference shot(s); segmenting %d target(s)", references.num_shots, len(targets))

    failures: dict[str, str] = {}
    progress = tqdm(total=len(targets), desc="segment", unit="image", disable=None)
    for start in range(0, len(targets), max(1, args.batch_size)):
        batch = targets[start : start + max(1, args.batch_size)]
        for url, result in _segment_batch(segmenter, references, batch, so, failures):
            name = storage.stem(url)
            try:
                imageio.write_mask_png(storage.join(args.out, f"{name}.png"), result.mask, so)
                if args.save_similarity:
                    buffer = io.BytesIO()
                    np.save(buffer, result.similarity)
                    storage.write_bytes(storage.join(args.out, f"{name}_similarity.npy"), buffer.getvalue(), so)
            except (DinosegError, OSError) as exc:
                failures[url] = str(exc)
        progress.update(len(batch))
    progress.close()
    for url, reason in failures.items():
        log.error("target %s failed: %s", url, reason)
    written = len(targets) - len(failures)
    print(f"wrote {written} mask(s) to {args.out}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} target(s) failed:", file=sys.stderr)
        for url, reason in failures.items():
            print(f"  {url}: {reason}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _segment_batch(segmenter, references, urls, storage_options, failures):
    """Read, extract (one backbone pass for the batch) and segment; a bad target is recorded, not fatal."""
    from dinoseg_core.io import imageio

    loaded = []
    for url in urls:
        try:
            loaded.append((url, imageio.read_image(url, storage_options)))
        except (DinosegError, OSError) as exc:
            failures[url] = str(exc)
    try:
        features = segmenter.extract_targets([image for _, image in loaded], [url for url, _ in loaded])
    except (DinosegError, OSError):
        features = None  # one bad image in the batch: retry one by one to isolate it
    for index, (url, image) in enumerate(loaded):
        try:
            target = features[index] if features is not None else segmenter.extract_target(image, url)
            yield url, segmenter.segment_features(references, target)
        except (DinosegError, OSError) as exc:
            failures[url] = str(exc)


def run_basis(args: argparse.Namespace) -> int:
    from dinoseg_core.io import storage

    segmenter = _load_segmenter(args)
    basis = segmenter.basis()
    storage.write_bytes(args.out, basis.to_bytes(), args.storage_options)
    print(f"wrote positional basis {tuple(basis.vectors.shape)} for {args.backbone} to {args.out}", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("dinoseg", "dinoseg_core"):  # our progress at INFO; libraries (httpx, botocore...) only warn
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.handler(args)
    except DinosegError as exc:
        print(f"dinoseg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
