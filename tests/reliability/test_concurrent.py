"""Two `dinoseg label` commands started at the same moment on one archive, each with its own temporary Prefect
server over one Prefect home (issue 10, item 6: both starts must survive each other and a busy machine). Both
end with exit code 0, the archive equals an undisturbed run's, and neither leaves a process behind."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import label_args
from tests.reliability.helpers import Command, command_env, verify_archive, wait_gone

pytestmark = pytest.mark.integration



def test_two_commands_started_at_once_both_finish_and_leave_nothing_behind(prefect_home, lake, clean, tmp_path):
    archive = str(tmp_path / "a.zarr")
    env = command_env(None, prefect_home)
    commands = [Command(*label_args(lake, archive), env=env) for _ in range(2)]
    for command in commands:
        command.wait_until(lambda: bool(command.tree) or command.process.poll() is not None, 120, "server start")
    codes = [command.finish(timeout=300) for command in commands]
    outputs = [command.output() for command in commands]
    assert codes == [0, 0], outputs
    assert all("failed 0" in out for out in outputs), outputs
    assert verify_archive(archive) == clean
    for command in commands:
        assert command.tree, "no temporary server seen"
        assert not wait_gone(command.tree, 10), "a temporary server outlived its command"
