"""``dinoseg serve``: the labelling flows served from this process (Prefect's ``serve``), the simplest way to run
them from the Prefect UI or API, or on a cron, without a work pool, a worker or ``prefect deploy``.

Each chosen flow becomes a deployment ``<flow>/<name>`` on the server at ``PREFECT_API_URL``; this process polls
for its runs and runs each in a subprocess of its own, ``--limit`` at a time. Stop it with Ctrl-C or SIGTERM: it
pauses its deployments, lets the runs in progress finish, then exits (docs/deployments.md, Serving without a work
pool).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from contextlib import ExitStack

from dinoseg.cli.options import EXIT_OK, add_command, local_path
from dinoseg_core.errors import InputError

#: Flows ``dinoseg serve`` can serve: their name (as Prefect shows it) -> (module, attribute).
FLOWS = {
    "label-collection": ("flows.labelling", "label_collection"),
    "segment-images": ("flows.labelling", "segment_images"),
    "label-with-text": ("flows.text", "label_with_text"),
}


def add_commands(commands) -> None:
    serve = add_command(
        commands, "serve", run_serve,
        help="serve the labelling flows from this process (runs from the Prefect UI/API or a cron, no work pool)")
    serve.add_argument("--flow", action="append", choices=sorted(FLOWS), default=None,
                       help="a flow to serve (repeat for several; default: all three)")
    serve.add_argument("--name", default="served", help="deployment name: runs are '<flow>/<name>' (default: served)")
    serve.add_argument("--params", default=None,
                       help="JSON file of the deployments' default parameters (e.g. deployments/params/demo.json); a "
                       "run may override any of them")
    serve.add_argument("--cron", default=None,
                       help="run on this schedule, e.g. '0 2 * * *' (one --flow, and --params with every required "
                       "parameter)")
    serve.add_argument("--timezone", default="UTC", help="time zone of --cron (default: UTC)")
    serve.add_argument("--limit", type=int, default=1, help="flow runs at once in this process (default: 1)")


def _parameters(url: str | None) -> dict:
    if url is None:
        return {}
    path = local_path(url)
    if path is None or not os.path.isfile(path):
        raise InputError(f"--params {url!r}: no such file; give a local JSON file of flow parameters")
    try:
        with open(path, encoding="utf-8") as handle:
            params = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--params {url!r}: not JSON ({exc})") from None
    if not isinstance(params, dict):
        raise InputError(f"--params {url!r}: give a JSON object of parameter names and values")
    return params


def run_serve(args: argparse.Namespace) -> int:
    """Serve the labelling flows from this process: each becomes the deployment <flow>/<name> on the Prefect server at
    PREFECT_API_URL (a server that keeps running: `prefect server start`, or Prefect Cloud), triggered from the UI,
    `prefect deployment run '<flow>/<name>' --param ...`, the API, or --cron. No work pool or worker is needed. Runs
    execute in subprocesses of this process. Stop with Ctrl-C or SIGTERM: the deployments are paused and the runs in
    progress finish first."""
    names = list(dict.fromkeys(args.flow or FLOWS))
    params = _parameters(args.params)
    if args.limit < 1:
        raise InputError(f"--limit {args.limit}: give 1 or more flow runs at once")
    if args.cron is not None and len(names) != 1:
        raise InputError("--cron schedules one flow with one set of parameters: give one --flow")

    from prefect import serve
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL

    from dinoseg.cli.prefect_api import PrefectUnavailable, prefect_api

    if not PREFECT_API_URL.value():  # the environment or the Prefect profile (`prefect config set`)
        raise InputError("dinoseg serve needs a Prefect server that outlives it: start one (`prefect server start`) "
                         "and set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api), or log in to Prefect Cloud")

    schedules = None
    if args.cron is not None:
        try:
            schedules = [Cron(args.cron, timezone=args.timezone)]
        except ValueError as exc:
            raise InputError(f"--cron {args.cron!r} / --timezone {args.timezone!r}: {exc}") from None
    deployments = []
    with ExitStack() as stack:
        try:
            stack.enter_context(prefect_api())
        except PrefectUnavailable as exc:  # a temporary server is no use to serve: only the first half of the fix
            raise PrefectUnavailable(str(exc).split(" or unset PREFECT_API_URL")[0]) from None
        for name in names:
            module, attribute = FLOWS[name]
            flow = getattr(importlib.import_module(module), attribute)
            given = {key: value for key, value in params.items() if key in flow.parameters.properties}
            unknown = sorted(set(params) - set(flow.parameters.properties))
            if unknown and len(names) == 1:
                raise InputError(f"--params {args.params!r}: {name} has no parameter {', '.join(unknown)}")
            missing = [p for p in flow.parameters.required or [] if p not in given]
            if schedules and missing:
                raise InputError(f"--cron: a scheduled run needs every required parameter of {name}; --params lacks "
                                 f"{', '.join(missing)}")
            deployments.append(flow.to_deployment(
                name=args.name, schedules=schedules, parameters=given, tags=["dinoseg", "served"],
                description=f"{flow.description or name} (served by `dinoseg serve`)"))
    shown = ", ".join(f"'{n}/{args.name}'" for n in names)
    print(f"serving {shown}{f' on {args.cron!r} ({args.timezone})' if args.cron else ''}, {args.limit} run(s) at once; "
          f"run one with `prefect deployment run '{names[0]}/{args.name}' --param ...`; stop with Ctrl-C",
          file=sys.stderr, flush=True)
    serve(*deployments, limit=args.limit, print_starting_message=False)
    return EXIT_OK
