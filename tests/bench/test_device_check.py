"""bench/device_check.sh end to end on the CPU (its --cpu smoke mode): the script runs as it is and writes the
Markdown tables it promises, with numbers in them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def rows_of(report: str, heading: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under ``## heading`` as {column: cell}."""
    section = report.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "")) == {"-"}
    return [dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.mark.slow
def test_device_check_runs_on_the_cpu_and_writes_its_tables(tmp_path):
    out = tmp_path / "device.md"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), "--cpu", "--out", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = out.read_text()
    assert run.stdout.strip() == report.strip()
    assert report.startswith("# dinoseg device check: CPU (smoke test: not GPU figures)")

    environment = {row["item"]: row["value"] for row in rows_of(report, "Environment")}
    assert environment["device"] == "cpu" and "torch" in environment

    throughput = rows_of(report, "Throughput")
    assert [(row["model"], row["dtype"]) for row in throughput] == [("random:tiny@0", "float32"),
                                                                     ("random:tiny@0", "bfloat16")]
    for row in throughput:
        backbone, pipeline = float(row["backbone tiles/s"]), float(row["pipeline tiles/s"])
        assert backbone > 0 and pipeline > 0
        assert float(row["pipeline/backbone"]) == pytest.approx(pipeline / backbone, rel=0.01, abs=0.002)
        assert row["peak mem backbone GiB"] == "-"  # no GPU figure is ever made up on the CPU
        assert int(row["batch"]) == 8 and int(row["size"]) == 128

    (agreement,) = rows_of(report, "Clustering and agreement")
    assert agreement["patches"] == "64"
    assert float(agreement["cluster torch ms/tile"]) > 0 and float(agreement["cluster scipy ms/tile"]) > 0
    assert agreement["partitions identical"] == "4/4"
    assert float(agreement["bf16 cos min"]) >= 0.999
    # the CPU run compares the CPU with itself: the masks must be identical
    assert agreement["mask IoU float32 vs CPU"].startswith("1.0000")
    assert 0.0 <= float(agreement["mask IoU bf16 vs CPU"].split()[0]) <= 1.0
    assert "## Flow (bench/throughput.py)" in report


def test_device_check_without_a_gpu_says_how_to_run_it():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the GPU run is not a unit test")
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "device_check.py")], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 2 and "--cpu" in run.stderr
