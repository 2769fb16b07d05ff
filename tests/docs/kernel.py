"""A notebook kernel for the docs test: runs the Python blocks of one page, in order, in one namespace.

Protocol (one JSON object per line): the test writes ``{"code": str, "name": str}`` on stdin; the kernel answers
``{"ok": bool, "output": str, "error": str | None}`` on the stdout it had at start. Python-level prints of a block
are captured into ``output``; file descriptor 1 is pointed at stderr first, so that output written below Python
(C extensions, subprocesses) cannot corrupt the protocol.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback


def main() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    namespace: dict = {"__name__": "__main__"}
    for line in sys.stdin:
        request = json.loads(line)
        captured = io.StringIO()
        error = None
        try:
            code = compile(request["code"], request["name"], "exec")
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                exec(code, namespace)  # noqa: S102 - running the docs' code is the point
        except BaseException:  # noqa: BLE001 - a block's SystemExit or KeyboardInterrupt is its failure too
            error = traceback.format_exc()
        protocol.write(json.dumps({"ok": error is None, "output": captured.getvalue(), "error": error}) + "\n")


if __name__ == "__main__":
    main()
