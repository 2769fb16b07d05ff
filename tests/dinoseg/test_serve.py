"""``dinoseg serve``'s argument checks (before any server; the served runs are tested in
tests/deployments/test_serve.py), and the terminal's Prefect log level that every command sets."""

import json
import os
import subprocess
import sys

import pytest

from dinoseg.cli import main as cli


@pytest.mark.parametrize("args, message", [
    (["--cron", "0 2 * * *"], "--cron schedules one flow"),
    (["--limit", "0"], "--limit 0"),
    (["--params", "missing.json"], "no such file"),
    (["--params", "list.json"], "a JSON object"),
])
def test_serve_refuses_bad_arguments_before_any_server(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    assert cli(["serve", *args]) == 2
    assert message in capsys.readouterr().err


def _serve(tmp_path, **env) -> subprocess.CompletedProcess:
    """``dinoseg serve`` in a fresh process (Prefect reads its settings once per process), its own Prefect home."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run([sys.executable, "-m", "dinoseg", "serve"], env={**clean, "PREFECT_HOME": str(tmp_path),
                          **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # imports Prefect (seconds on a busy machine)
def test_prefect_logs_at_warning_on_the_terminal_unless_the_user_chose_a_level(tmp_path, monkeypatch):
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH, load_logging_config

    monkeypatch.delenv("PREFECT_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", raising=False)
    assert cli(["vacuum", "--archive", str(tmp_path / "none.zarr")]) == 2  # any command: the level is set first
    config = load_logging_config(DEFAULT_LOGGING_SETTINGS_PATH)  # what Prefect configures its console with
    assert config["handlers"]["console"]["level"] == "WARNING"
    assert config["handlers"]["api"]["level"] == 0  # the server still gets every line

    monkeypatch.delenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "INFO")  # the user's choice wins
    assert cli(["vacuum", "--archive", str(tmp_path / "none.zarr")]) == 2
    assert load_logging_config(DEFAULT_LOGGING_SETTINGS_PATH)["handlers"]["console"]["level"] == 0


@pytest.mark.slow  # two processes that import Prefect
def test_serve_needs_a_server_that_answers_and_names_only_the_fix_that_applies(tmp_path):
    done = _serve(tmp_path)
    assert done.returncode == 2 and "needs a Prefect server that outlives it" in done.stderr, done.stderr
    done = _serve(tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api")  # nothing listens on port 9
    assert done.returncode == 3, done.stderr
    assert "no Prefect server answers at PREFECT_API_URL=http://127.0.0.1:9/api" in done.stderr
    assert "temporary server" not in done.stderr  # serving needs a server that outlives the command
