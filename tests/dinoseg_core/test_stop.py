"""Stopping on SIGINT/SIGTERM (issue 14, item 3): training finishes its step, saves a checkpoint and stops; the
resumed run ends where an uninterrupted one does. Signals are real (``os.kill`` of this process)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from dinoseg_core import stop
from dinoseg_core.io.heads import HeadCheckpoint, read_head_checkpoint
from dinoseg_core.ovseg import SegHeadConfig, SegModel, TrainConfig, load_dinotxt, train
from tests.ovseg_factory import shapes_dataset

HEAD = SegHeadConfig(feature_dim=64, hidden=16, early_blocks=0, spatial_blocks=1, class_blocks=1, class_heads=2,
                     decoder_channels=(8,))
TRAIN = TrainConfig(batch_size=2, lr=1e-3, short_side=64, crop=64, templates=("a {}.",), checkpoint_every=10)


@pytest.fixture()
def fresh_stop(monkeypatch):
    """The module's state as in a new process, and this process's handlers back afterwards."""
    monkeypatch.setattr(stop, "_requested", None)
    monkeypatch.setattr(stop, "_deferring", 0)
    handlers = {signum: signal.getsignal(signum) for signum in stop.SIGNALS}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _model(dinotxt):
    torch.manual_seed(0)
    return SegModel(dinotxt, config=HEAD)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_training_saves_the_step_then_stops_and_the_resume_is_exact(fresh_stop, tmp_path, signum):
    dinotxt = load_dinotxt("random:tiny@0", device="cpu")
    data = shapes_dataset(2, size=64, seed=1)
    stop.install()
    url = str(tmp_path / "head.safetensors")

    def signal_at_step_1(step: int, loss: float) -> None:
        if step == 1:
            os.kill(os.getpid(), signum)  # arrives inside the step: training finishes it first

    with pytest.raises(stop.Stopped) as caught:
        train(_model(dinotxt), data, 4, config=TRAIN, checkpoint=HeadCheckpoint(url), on_step=signal_at_step_1)
    assert caught.value.signum == signum and stop.exit_code(signum) in (130, 143)
    assert f"training stopped after step 2; resumable from {url}" in str(caught.value)
    assert read_head_checkpoint(url)[1]["step"] == 2  # between checkpoints (every 10): saved because of the signal

    stop._requested = None  # a new command
    resumed_model, clean_model = _model(dinotxt), _model(dinotxt)
    resumed = train(resumed_model, data, 4, config=TRAIN, checkpoint=HeadCheckpoint(url))
    clean = train(clean_model, data, 4, config=TRAIN)
    assert resumed.resumed_from == 2 and resumed.losses == clean.losses
    for name, value in clean_model.head.state_dict().items():
        assert torch.equal(resumed_model.head.state_dict()[name], value), name
    assert signal.getsignal(signum) is stop._handler  # safe_points gave the command's handler back


def test_outside_safe_points_the_first_signal_stops_at_once_and_a_repeat_soon_after_is_ignored(fresh_stop):
    stop.install()
    with pytest.raises(stop.Stopped) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**7):  # the handler runs between bytecodes
            pass
    assert caught.value.signum == signal.SIGTERM and stop.requested() == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGTERM)  # Prefect re-sends SIGTERM to itself while unwinding: no second raise
    sum(range(1000))
    assert stop.requested() == signal.SIGTERM


def test_a_second_signal_inside_safe_points_stops_at_once(fresh_stop):
    with pytest.raises(stop.Stopped) as caught:
        with stop.safe_points():
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))
            assert stop.requested() == signal.SIGINT  # deferred: the loop decides where to stop
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**7):
                pass
    assert "a second signal" in str(caught.value)
