"""``dinoseg serve``'s argument checks (before any server; the served runs are tested in
tests/deployments/test_serve.py), and the terminal's Prefect log level that every command sets."""

import json

import pytest

from dinoseg.cli import main as cli


@pytest.mark.parametrize("args, env, message", [
    (["--cron", "0 2 * * *"], {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "--cron schedules one flow"),
    (["--limit", "0"], {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "--limit 0"),
    ([], {}, "needs a Prefect server that outlives it"),
    (["--params", "missing.json"], {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "no such file"),
    (["--params", "list.json"], {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "a JSON object"),
])
def test_serve_refuses_bad_arguments_before_any_server(args, env, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli(["serve", *args]) == 2
    assert message in capsys.readouterr().err


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
