"""Commands that run the method directly, without Prefect: ``segment`` (INSID3 on target images), ``basis`` (save
a positional basis) and ``correspond`` (semantic correspondence of keypoints)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from dinoseg.cli.options import (
    DEVICE_OPTIONS,
    EXIT_OK,
    EXIT_PARTIAL,
    add_backbone_option,
    add_command,
    add_run_options,
    config_options,
)
from dinoseg_core.config import InsidConfig, MethodOptions, add_options, apply_options
from dinoseg_core.errors import DinosegError, InputError

log = logging.getLogger("dinoseg")

METHOD_TITLE = "INSID3 method options (defaults: the paper's)"
#: The INSID3 options that change the features a correspondence matches (input size, positional debiasing).
CORRESPONDENCE_OPTIONS = ("image_size", "resize_mode", "svd_components", "basis_source")


def add_commands(commands) -> None:
    segment = add_command(commands, "segment", run_segment,
                          help="segment a concept shown by reference images+masks in target images (INSID3)")
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
    _add_model_options(segment)

    basis = add_command(commands, "basis", run_basis,
                        help="compute and save the positional basis of a backbone and input size")
    basis.add_argument("--out", required=True, help="output file (.safetensors), path or URL")
    _add_model_options(basis)

    correspond = add_command(
        commands, "correspond", run_correspond,
        help="find where keypoints of a source image lie in a target image (semantic correspondence)")
    correspond.add_argument("--source", required=True, help="source image, path or URL")
    correspond.add_argument("--target", required=True, help="target image, path or URL")
    points = correspond.add_mutually_exclusive_group(required=True)
    points.add_argument("--keypoints", type=keypoint_list, metavar="X,Y;X,Y",
                        help="source keypoints in pixels, e.g. '120,48;300.5,210'")
    points.add_argument("--keypoints-file", metavar="JSON",
                        help='a JSON file (path or URL) with [[x, y], ...] or {"keypoints": [[x, y], ...]}')
    correspond.add_argument("--out", default=None, help="also write the JSON here (path or URL)")
    correspond.add_argument("--debiased", action=argparse.BooleanOptionalAction, default=True,
                            help="match positional-debiased features (default: yes; --no-debiased: raw features)")
    _add_model_options(correspond, method=CORRESPONDENCE_OPTIONS)


def _add_model_options(parser: argparse.ArgumentParser, method: tuple[str, ...] | None = None) -> None:
    add_backbone_option(parser)
    add_run_options(parser, only=DEVICE_OPTIONS)
    add_options(parser, InsidConfig, METHOD_TITLE, only=method)


def keypoint_list(text: str) -> list[list[float]]:
    """``"x,y;x,y"`` -> ``[[x, y], [x, y]]``."""
    try:
        points = [[float(v) for v in pair.split(",")] for pair in text.split(";") if pair.strip()]
    except ValueError:
        points = []
    if not points or any(len(p) != 2 for p in points):
        raise argparse.ArgumentTypeError(f"{text!r}: give x,y pixel pairs separated by ';', e.g. '120,48;300,210'")
    return points


def config_from_args(args: argparse.Namespace) -> InsidConfig:
    """The INSID3 config with every method option given on the command line applied (checked before any work)."""
    return apply_options(InsidConfig(), config_options(args, MethodOptions, InsidConfig()))


def _load_segmenter(args: argparse.Namespace, config: InsidConfig):
    from dinoseg_core.backbone import load_backbone
    from dinoseg_core.segmenter import InContextSegmenter

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
    """Segment the concept shown by the reference images and masks in every target (INSID3). Writes
    OUT/<target stem>.png (uint8 0/255, the target's size) for each. Exit code 1 if some targets failed (the
    others are written), 2 if nothing could be done."""
    from tqdm import tqdm

    from dinoseg_core.io import imageio, storage

    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    so = args.storage_options
    config = config_from_args(args)
    targets = expand_targets(args.target, so)
    segmenter = _load_segmenter(args, config)
    if args.basis:
        from dinoseg_core.basis import PositionalBasis

        segmenter.add_basis(PositionalBasis.from_bytes(storage.read_bytes(args.basis, so), name=args.basis))
    limit = imageio.max_tile_pixels(config.image_size)  # checked from each header, before decoding
    images = [imageio.read_image(image, so, max_pixels=limit) for image, _ in args.reference]
    masks = [imageio.read_mask(mask, so, max_pixels=limit) for _, mask in args.reference]
    references = segmenter.embed_references(images, masks, names=[image for image, _ in args.reference])
    log.info("embedded %d reference shot(s); segmenting %d target(s)", references.num_shots, len(targets))

    failures: dict[str, str] = {}
    progress = tqdm(total=len(targets), desc="segment", unit="image", disable=None)  # on a terminal only
    progress.set_postfix(failed=0, refresh=False)
    for start in range(0, len(targets), args.batch_size):
        batch = targets[start : start + args.batch_size]
        for url in _segment_batch(segmenter, references, batch, args, failures):
            log.debug("wrote the mask of %s", url)
        progress.set_postfix(failed=len(failures), refresh=False)
        progress.update(len(batch))
    progress.close()
    print(f"wrote {len(targets) - len(failures)} mask(s) to {args.out}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} target(s) failed:", file=sys.stderr)
        for url, reason in failures.items():
            print(f"  {url}: {reason}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _segment_batch(segmenter, references, urls: list[str], args: argparse.Namespace, failures: dict[str, str]):
    """Read, extract (one backbone pass for the batch), segment and write; yields each URL written. A bad target
    is recorded in ``failures``, not fatal."""
    import io

    import numpy as np

    from dinoseg_core.io import imageio, storage
    from dinoseg_core.preprocess import resize_mask

    so = args.storage_options
    loaded, sizes = {}, {}
    for url in urls:
        try:  # a large target is decoded reduced towards the model's input; its mask keeps the file's size
            loaded[url], sizes[url] = imageio.read_tile(url, so, input_side=segmenter.config.image_size)
        except (DinosegError, OSError) as exc:
            failures[url] = str(exc)
    for url, features in zip(loaded, segmenter.extract_each(list(loaded.values()), list(loaded))):
        try:
            if isinstance(features, DinosegError):
                raise features
            result = segmenter.segment_features(references, features)
            name = storage.stem(url)
            mask = result.mask if result.mask.shape == sizes[url] else resize_mask(result.mask, sizes[url])
            imageio.write_mask_png(storage.join(args.out, f"{name}.png"), mask, so)
            if args.save_similarity:
                buffer = io.BytesIO()
                np.save(buffer, result.similarity)
                storage.write_bytes(storage.join(args.out, f"{name}_similarity.npy"), buffer.getvalue(), so)
            yield url
        except (DinosegError, OSError) as exc:
            failures[url] = str(exc)


def run_basis(args: argparse.Namespace) -> int:
    """Compute the positional basis of a backbone at an input size (INSID3's debiasing) and save it, for
    `dinoseg segment --basis`."""
    from dinoseg_core.io import storage

    segmenter = _load_segmenter(args, config_from_args(args))
    basis = segmenter.basis()
    storage.write_bytes(args.out, basis.to_bytes(), args.storage_options)
    print(f"wrote positional basis {tuple(basis.vectors.shape)} for {args.backbone} to {args.out}", file=sys.stderr)
    return EXIT_OK


def _read_keypoints(url: str, storage_options: dict | None) -> list[list[float]]:
    from dinoseg_core.io import storage

    try:
        data = json.loads(storage.read_bytes(url, storage_options))
    except json.JSONDecodeError as exc:
        raise InputError(f"--keypoints-file {url!r}: not valid JSON ({exc})") from None
    points = data.get("keypoints") if isinstance(data, dict) else data
    if not isinstance(points, list) or not points or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in points):
        raise InputError(f'--keypoints-file {url!r}: give [[x, y], ...] or {{"keypoints": [[x, y], ...]}}')
    return [[float(x), float(y)] for x, y in points]


def run_correspond(args: argparse.Namespace) -> int:
    """Each source keypoint takes the (debiased) backbone feature under it; its match is the most similar target
    patch, refined by a soft-argmax. Prints JSON {source, target, keypoints, matches} with (x, y) pixel
    coordinates, matches[i] being where keypoints[i] lands in the target."""
    from dinoseg_core.io import imageio, storage

    so = args.storage_options
    config = config_from_args(args)
    keypoints = args.keypoints or _read_keypoints(args.keypoints_file, so)
    source, target = imageio.read_image(args.source, so), imageio.read_image(args.target, so)
    segmenter = _load_segmenter(args, config)
    matches = segmenter.correspond(source, target, keypoints, debiased=args.debiased)
    result = {"source": args.source, "target": args.target, "keypoints": keypoints,
              "matches": [[round(float(x), 2), round(float(y), 2)] for x, y in matches.tolist()]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        storage.write_bytes(args.out, text.encode(), so)
    return EXIT_OK
