"""Commands in a fresh interpreter: what a command imports, and how it exits, is per process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Modules a command must not import before its arguments are checked (seconds of start-up each).
HEAVY = ("torch", "prefect", "flows")

# Runs main(argv) and prints, as the last line of stdout, the HEAVY modules it imported (argparse errors included).
_MAIN = f"""
import sys
from dinoseg.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(" ".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
sys.exit(code)
"""


def python(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run ``code`` with a throwaway Prefect home and no Prefect settings from this environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    environment["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**environment, **(env or {})}, cwd=ROOT)


def dinoseg(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """``dinoseg ARGS`` in a fresh interpreter: (exit code, stderr lines, the HEAVY modules it imported)."""
    result = python(_MAIN, *args, env=env, timeout=timeout)
    imported = result.stdout.splitlines()[-1].split() if result.stdout.strip() else []
    return result.returncode, result.stderr.strip().splitlines(), imported
