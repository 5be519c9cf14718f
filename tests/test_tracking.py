"""Progress lines when piped, the training ETA, and tracking (TensorBoard, W&B offline)."""

from __future__ import annotations

import io
import time

import pytest

from mfdiffuser.algos import trainer as trainer_mod
from mfdiffuser.algos.run import train
from mfdiffuser.algos.trainer import TrainerConfig
from mfdiffuser.progress import ProgressBar, format_duration
from mfdiffuser.tracking import evaluation_scalars, log_evaluation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_format_duration_by_hand():
    assert format_duration(7.4) == "7s"
    assert format_duration(125) == "2m 05s"
    assert format_duration(3725) == "1h 02m"
    assert format_duration(-3) == "0s"


def test_progress_prints_one_line_per_tenth_when_not_a_terminal():
    out = io.StringIO()
    bar = ProgressBar(20, "train", stream=out)
    for i in range(20):
        bar.update(1, f"loss {i}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # the start, then at 10%, 20%, ..., 100%
    assert lines[0].startswith("train: 0/20 (0%)") and lines[0].endswith("started")
    assert lines[1].startswith("train: 2/20 (10%), loss 1, ") and "left" in lines[1]
    assert lines[-1].startswith("train: 20/20 (100%), loss 19, ") and "left" not in lines[-1]


def test_progress_says_when_it_stopped_early():
    out = io.StringIO()
    bar = ProgressBar(100, "evaluate", done=40, stream=out)
    bar.update(5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("evaluate: 40/100 (40%)")
    assert lines[-1].startswith("evaluate: 45/100 (45%)") and lines[-1].endswith("stopped")


def test_train_prints_its_eta_and_warns_about_hours_on_cpu(gs_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer_mod, "HOURS_ON_CPU", 0.0)  # any budget counts as "hours" here
    cfg = TrainerConfig(steps=30, batch_size=4, device="cpu", log_every=10, progress=True)
    train("bc", gs_dataset, tmp_path / "run", {"hidden": 16}, cfg)
    captured = capsys.readouterr()
    eta = [ln for ln in captured.out.splitlines() if "steps/s on cpu" in ln]
    assert len(eta) == 1 and "steps left, about" in eta[0]
    assert "train: 30/30 (100%)" in captured.out  # pytest's capture is not a terminal: lines
    assert "this budget takes hours on CPU" in captured.err


def test_evaluation_metrics_go_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = {
        "results": {
            "100": {"status": "done", "score": {"mean": 71.5, "ci": 2.0}, "return": {"mean": 0.25}},
            "1000": {"status": "skipped", "reason": "budget"},
        },
        "exploitability": {"n_agents": 100, "exploitability": 0.125, "kind": "exact"},
    }
    assert evaluation_scalars(result) == {
        "N100/return": 0.25,
        "N100/score": 71.5,
        "N100/exploitability": 0.125,
    }
    where = log_evaluation(tmp_path, 300, result)
    acc = EventAccumulator(str(where))
    acc.Reload()
    (event,) = acc.Scalars("eval/N100/score")
    assert (event.step, event.value) == (300, 71.5)


def test_wandb_offline_logs_training_and_resumes_the_same_run(gs_dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    cfg = dict(batch_size=4, device="cpu", log_every=2, progress=False, wandb=True)
    train("bc", gs_dataset, run_dir, {"hidden": 16}, TrainerConfig(steps=2, **cfg))
    run_id = (run_dir / "wandb_id").read_text().strip()
    # wandb names an offline run directory by the second it starts in: two runs started within
    # one second share a directory, so the resumed run starts in the next second.
    first = int(time.time())
    while int(time.time()) == first:
        time.sleep(0.05)
    train("bc", gs_dataset, run_dir, {"hidden": 16}, TrainerConfig(steps=4, **cfg))
    assert (run_dir / "wandb_id").read_text().strip() == run_id
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 2 and all(list(d.glob("*.wandb")) for d in offline)


@pytest.fixture
def no_wandb(monkeypatch):
    """``import wandb`` fails, as where the extra is not installed."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_wandb_missing_names_the_extra(gs_dataset, tmp_path, no_wandb, capsys):
    from mfdiffuser.cli import main
    from mfdiffuser.errors import MfdError

    cfg = TrainerConfig(steps=2, batch_size=4, device="cpu", progress=False, wandb=True)
    with pytest.raises(MfdError, match=r"mfdiffuser\[wandb\]"):
        train("bc", gs_dataset, tmp_path / "run", {"hidden": 16}, cfg)
    out = tmp_path / "cli-run"
    assert main(["train", "--algo", "bc", "--dataset", str(gs_dataset), "--out", str(out), "--wandb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'mfdiffuser[wandb]'" in err
    assert not out.exists()  # nothing written before the check
