"""`dinoseg evaluate` / `dinoseg calibrate`: a bad argument is one line before torch, Prefect or a server."""

import pytest

from tests.dinoseg.subprocess_cli import dinoseg


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--dataset", "{tmp}/missing"], "--dataset '{tmp}/missing': no such file or folder"),
    (["calibrate", "--references", "{tmp}/refs.yaml", "--out", "o.yaml", "--taus", "0.5", "1.5"],
     "--taus [1.5]: tau must be in (0, 1]"),
    (["calibrate", "--references", "{tmp}/refs.yaml", "--out", "o.yaml", "--concept", "forest"],
     "--concept ['forest']: not in"),
    (["calibrate", "--references", "{tmp}/refs.yaml", "--out", "o.yaml", "--scene-global-weights", "0", "1.5"],
     "--scene-global-weights [1.5]: a global weight must be in [0, 1]"),
])
def test_a_bad_quality_argument_is_one_line_before_any_server(tmp_path, args, message):
    (tmp_path / "refs.yaml").write_text("concepts:\n  roof:\n    references:\n      - {image: a.png, mask: b.png}\n")
    code, err, imported = dinoseg(*[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and len(err) == 1 and message.format(tmp=tmp_path) in err[0], err
    assert imported == []
