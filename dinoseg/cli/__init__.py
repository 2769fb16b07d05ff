"""The ``dinoseg`` command line: one parser, one module per group of commands.

- :mod:`dinoseg.cli.segment`: ``segment``, ``basis``, ``correspond``: the method on images, no Prefect;
- :mod:`dinoseg.cli.label`: ``label`` (the ``label_collection`` flow), ``preview``, ``export``;
- :mod:`dinoseg.cli.text`: ``label-text``, ``train-ovss``, ``eval-ovss`` (the :mod:`flows.text` flows).

Options are generated from the configs (:mod:`dinoseg_core.config`, :mod:`dinoseg_core.ovseg.config`) and from
:class:`tasks.options.RunOptions`, so every default is written once. Building the parser imports neither torch nor
Prefect (``--help`` answers at once); a command imports them in its handler, after its arguments are checked, and
the flow commands start a Prefect server only then (:mod:`dinoseg.cli.prefect_api`).

Exit codes: 0 done; 1 some items failed (the others were written); 2 nothing could be done (a one-line error).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from dinoseg.cli import label, segment, text
from dinoseg.cli.options import EXIT_USAGE, Parser
from dinoseg_core.errors import DinosegError

__all__ = ["build_parser", "main"]

DESCRIPTION = (
    "In-context (INSID3) and open-vocabulary segmentation with a frozen DINOv3 backbone: segment images directly "
    "(segment, basis, correspond), or label collections of tiles and GeoTIFF scenes into a Zarr mask archive "
    "through Prefect flows (label, label-text, train-ovss, eval-ovss) and inspect it (preview, export)."
)


def build_parser() -> Parser:
    parser = Parser(prog="dinoseg", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (segment, label, text):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code."""
    # Prefect's telemetry heartbeat locks a temporary server's SQLite database ("database is locked")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("dinoseg", "dinoseg_core"):  # our progress at INFO; libraries (httpx, botocore...) only warn
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.handler(args)
    except DinosegError as exc:
        print(f"dinoseg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
