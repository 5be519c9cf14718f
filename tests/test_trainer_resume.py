"""Exact resume of ``fit``: after SIGINT, SIGTERM, SIGKILL or a KeyboardInterrupt inside a step, the
resumed run ends with the same tensors as an uninterrupted one; damaged checkpoints and logs are
one-line errors; checkpoints load weights-only."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mfdiffuser.algos.run import train
from mfdiffuser.algos.trainer import (
    CHECKPOINT,
    METRICS,
    TrainerConfig,
    TrainingInterrupted,
    read_checkpoint,
    read_metrics,
    save_checkpoint,
)
from mfdiffuser.cli import main
from mfdiffuser.data.sampler import WindowSampler
from mfdiffuser.errors import MfdError
from mfdiffuser.integrity import sealed_bytes
from mfdiffuser.utils import seed_everything

OPTIONS = {"horizon": 1, "m_range": [2, 4], "hidden": 8, "n_blocks": 1, "value_hidden": 8,
           "replan_every": 1, "stats_batches": 2}
"""A tiny MF-Diffuser (it has a value-scale buffer, advanced by each step's loss)."""
STEPS = 40


def _trainer(steps: int = STEPS) -> TrainerConfig:
    return TrainerConfig(steps=steps, batch_size=4, log_every=5, checkpoint_every=10, ema_start=5,
                         progress=False, device="cpu")


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses below run on one thread: the same arithmetic here
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread():
    with _one_thread():
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from mfdiffuser.data import GenerateConfig, generate_dataset

    path = tmp_path_factory.mktemp("resume") / "gs.h5"
    generate_dataset(GenerateConfig(env="gaussian-squeeze", out=str(path), env_args={"n_agents": 20},
                                    quality="mixed", episodes=10, ref_episodes=2, progress=False))
    return path


def _train(dataset: Path, run_dir: Path, steps: int = STEPS):
    seed_everything(0)  # as `mfd train` does: the initial weights come from the global generator
    return train("mf-diffuser", dataset, run_dir, OPTIONS, _trainer(steps))


def _leaves(obj, prefix=""):
    """Every leaf of a checkpoint state as ``{path: value}`` (tensors and plain values)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_leaves(v, f"{prefix}/{i}"))
        return out
    return {prefix: obj}


def assert_same_checkpoint(a: Path, b: Path) -> int:
    """Assert two run directories' checkpoints are equal leaf by leaf; return the number of tensors."""
    la, lb = _leaves(read_checkpoint(a / CHECKPOINT)), _leaves(read_checkpoint(b / CHECKPOINT))
    assert la.keys() == lb.keys()
    differ = []
    for key, va in la.items():
        vb = lb[key]
        same = torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb
        if not same:
            differ.append(key)
    assert not differ, f"{len(differ)} of {len(la)} leaves differ: {differ[:8]}"
    return sum(isinstance(v, torch.Tensor) for v in la.values())


def _metrics(run_dir: Path) -> list[dict]:
    rows = [entry for _, entry in read_metrics(run_dir / METRICS)]
    for r in rows:
        r.pop("steps_per_s"), r.pop("interval_s")
    return rows


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory) -> Path:
    """An uninterrupted run of STEPS steps."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    with _one_thread():
        _train(dataset, run_dir)
    return run_dir


PRE = OPTIONS["stats_batches"]
"""Batches MF-Diffuser's build draws (data statistics) before training's first step."""


def _interrupt_sampler_at(monkeypatch, step: int, action, pre: int = PRE) -> None:
    """Make the batch draw of training step ``step`` (part-way through that step) run ``action()``.

    ``pre``: batches the learner's build draws before training (MF-Diffuser's statistics).
    """
    call = step + pre
    original = WindowSampler.sample
    calls = {"n": 0}

    def sample(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WindowSampler, "sample", sample)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_mid_step_saves_that_step_and_resumes_exactly(dataset, straight, tmp_path, monkeypatch,
                                                             signum):
    run_dir = tmp_path / "run"
    # the signal arrives while step 23 draws its batch: step 23 completes, then training stops
    _interrupt_sampler_at(monkeypatch, 23, lambda: signal.raise_signal(signum))
    with pytest.raises(TrainingInterrupted) as info:
        _train(dataset, run_dir)
    assert (info.value.step, info.value.total, info.value.signum) == (23, STEPS, signum)
    assert read_checkpoint(run_dir / CHECKPOINT)["step"] == 23
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["step"] == 23
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    monkeypatch.undo()
    assert _train(dataset, run_dir).step == STEPS
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
    assert assert_same_checkpoint(run_dir, straight) > 40  # weights, EMA, Adam moments, buffers, RNG
    assert _metrics(run_dir) == _metrics(straight)


def test_keyboard_interrupt_inside_a_step_saves_nothing(dataset, straight, tmp_path, monkeypatch):
    # a second Ctrl-C (or one where no handler could be set) lands part-way through step 23: nothing
    # of that step may be saved, so the run resumes from its last checkpoint (step 20)
    run_dir = tmp_path / "run"

    def interrupt():
        raise KeyboardInterrupt

    _interrupt_sampler_at(monkeypatch, 23, interrupt)
    with pytest.raises(TrainingInterrupted) as info:
        _train(dataset, run_dir)
    assert info.value.step == 20 and read_checkpoint(run_dir / CHECKPOINT)["step"] == 20
    monkeypatch.undo()
    _train(dataset, run_dir)
    assert_same_checkpoint(run_dir, straight)
    assert _metrics(run_dir) == _metrics(straight)


def test_interrupt_before_the_first_checkpoint(dataset, tmp_path, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    _interrupt_sampler_at(monkeypatch, 3, interrupt)
    with pytest.raises(TrainingInterrupted) as info:
        _train(dataset, tmp_path / "run")
    assert info.value.step is None and not (tmp_path / "run" / CHECKPOINT).exists()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"


def test_signal_while_loading_the_checkpoint_is_an_interrupted_run(dataset, straight, tmp_path, monkeypatch):
    # a Ctrl-C or SIGTERM before the first step of a resumed run (here: while its checkpoint loads)
    # stops it cleanly: the checkpoint on disk stays the one to resume from, run.json says so
    import mfdiffuser.algos.trainer as trainer_module

    run_dir = tmp_path / "run"
    _interrupt_sampler_at(monkeypatch, 23, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted):
        _train(dataset, run_dir)
    monkeypatch.undo()
    original = trainer_module.read_checkpoint

    def read_then_signal(*args, **kwargs):
        state = original(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)  # the default handler would kill the process here
        return state

    monkeypatch.setattr(trainer_module, "read_checkpoint", read_then_signal)
    with pytest.raises(TrainingInterrupted) as info:
        _train(dataset, run_dir)
    assert (info.value.step, info.value.signum) == (23, signal.SIGTERM)
    assert read_checkpoint(run_dir / CHECKPOINT)["step"] == 23
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["step"] == 23
    monkeypatch.undo()
    _train(dataset, run_dir)
    assert_same_checkpoint(run_dir, straight)


def test_signal_before_any_checkpoint_saves_none(dataset, tmp_path, monkeypatch):
    import mfdiffuser.tracking as tracking

    original = tracking.Tracker.__init__

    def init_then_signal(self, *args, **kwargs):  # while the loggers start, before the first step
        original(self, *args, **kwargs)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(tracking.Tracker, "__init__", init_then_signal)
    with pytest.raises(TrainingInterrupted) as info:
        _train(dataset, tmp_path / "run")
    assert info.value.step is None and not (tmp_path / "run" / CHECKPOINT).exists()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"


# ----------------------------------------------------------------- a dataset larger than the pool
POOL_BYTES = 5000
"""The window sampler's pool in the test below: 3 blocks of 2 episodes out of 20 blocks."""


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    """A hand-made dataset of 40 short episodes stored 2 per chunk (one block of the pool)."""
    from test_data_sampler import handmade

    path = tmp_path_factory.mktemp("chunked") / "d.h5"
    handmade(path, lengths=[3] * 40, chunk_bytes=1000)
    return path


def _small_pool(monkeypatch) -> None:
    original = WindowSampler.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "cache_bytes": POOL_BYTES})
        assert not self.resident

    monkeypatch.setattr(WindowSampler, "__init__", init)


def _train_chunked(dataset: Path, run_dir: Path):
    seed_everything(0)
    options = {"horizon": 2, "m_range": [2, 4], "hidden": 8}
    return train("bc", dataset, run_dir, options, _trainer())


def test_resume_is_exact_when_the_dataset_exceeds_the_sampler_pool(chunked, tmp_path, monkeypatch):
    """The pool's blocks are part of the checkpoint: a resumed run samples the same episodes."""
    _small_pool(monkeypatch)
    straight_dir = tmp_path / "straight"
    _train_chunked(chunked, straight_dir)
    run_dir = tmp_path / "run"
    # the 40th batch drawn (bc's build draws some for its statistics first): part-way through training
    _interrupt_sampler_at(monkeypatch, 40, lambda: signal.raise_signal(signal.SIGINT), pre=0)
    with pytest.raises(TrainingInterrupted) as info:
        _train_chunked(chunked, run_dir)
    assert 10 < info.value.step < STEPS and info.value.step % 10  # saved between two checkpoints
    state = read_checkpoint(run_dir / CHECKPOINT)["sampler"]
    assert len(state["blocks"]) == 3 and state["batches"] == info.value.step
    monkeypatch.undo()
    _small_pool(monkeypatch)
    _train_chunked(chunked, run_dir)
    assert_same_checkpoint(run_dir, straight_dir)
    assert _metrics(run_dir) == _metrics(straight_dir)


# ----------------------------------------------------------------- real signals to `mfd train`
_SCRIPT = textwrap.dedent(
    """
    import sys
    import time

    import torch

    from mfdiffuser.cli import main
    from mfdiffuser.data.sampler import WindowSampler

    torch.set_num_threads(1)
    original = WindowSampler.sample


    def slow_sample(self, *args, **kwargs):
        time.sleep(0.02)  # leave time to signal the run part-way through
        return original(self, *args, **kwargs)


    WindowSampler.sample = slow_sample
    sys.exit(main(sys.argv[1:]))
    """
)


def _cli_args(dataset: Path, out: Path, steps: int) -> list[str]:
    sets = [f"--set={k}={json.dumps(v)}" for k, v in OPTIONS.items()]
    return ["train", "--algo", "mf-diffuser", "--dataset", str(dataset), "--out", str(out), "--steps",
            str(steps), "--batch-size", "4", "--checkpoint-every", "10", "--device", "cpu", "--no-progress",
            "--threads", "1", *sets]  # one thread everywhere: the same float sums on any machine


CLI_STEPS = 80


@pytest.fixture(scope="module")
def cli_straight(dataset, tmp_path_factory) -> Path:
    """An uninterrupted ``mfd train`` of CLI_STEPS steps, in this process."""
    out = tmp_path_factory.mktemp("cli") / "straight"
    with _one_thread():
        assert main(_cli_args(dataset, out, CLI_STEPS)) == 0
    return out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_signal_to_mfd_train_then_resume_equals_uninterrupted(dataset, cli_straight, tmp_path, signum):
    steps = CLI_STEPS
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), *_cli_args(dataset, out, steps)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"training ended before it could be interrupted: {proc.stderr.read()}"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    at = read_checkpoint(out / CHECKPOINT)["step"]
    assert 10 <= at < steps
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + signum, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"interrupted (saved step {at} of {steps}); resume with the same command" in lines[0]
        record = json.loads((out / "run.json").read_text())
        assert record["status"] == "interrupted" and record["step"] == at
    # the same command again finishes the run, equal to an uninterrupted one
    assert main(_cli_args(dataset, out, steps)) == 0
    assert_same_checkpoint(out, cli_straight)


# ------------------------------------------------------------------- damaged checkpoints and logs
@pytest.fixture()
def trained(dataset, straight, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("run.json", CHECKPOINT, METRICS):
        (run_dir / name).write_bytes((straight / name).read_bytes())
    return run_dir


def _resume_error(dataset: Path, run_dir: Path) -> str:
    with pytest.raises(MfdError) as info:
        _train(dataset, run_dir, steps=STEPS + 5)
    message = str(info.value)
    assert "\n" not in message and str(run_dir) in message
    return message


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"", "0 bytes, too short"),
        (lambda b: b[: len(b) // 2], "truncated or extended"),
        (lambda b: b[:100], "too short"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "digest mismatch"),
        (lambda b: b[512:], "a checkpoint without a digest"),  # a bare torch.save file, as before
    ],
    ids=["empty", "half", "header-cut", "last-byte", "unsealed"],
)
def test_damaged_checkpoint_is_a_one_line_error(dataset, trained, damage, message):
    ckpt = trained / CHECKPOINT
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    text = _resume_error(dataset, trained)
    assert message in text and "delete it to start the run over" in text
    assert json.loads((trained / "run.json").read_text())["status"] == "failed"


def test_checkpoint_with_code_is_refused_before_it_runs(dataset, trained, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import io

    buffer = io.BytesIO()
    torch.save({"learner": Payload()}, buffer)
    (trained / CHECKPOINT).write_bytes(sealed_bytes("checkpoint", buffer.getvalue()))
    assert "unreadable checkpoint" in _resume_error(dataset, trained)
    assert not marker.exists()


def test_checkpoint_state_is_weights_only(straight):
    state = read_checkpoint(straight / CHECKPOINT)
    cuda = {"cuda_rng"} if torch.cuda.is_available() and torch.cuda.is_initialized() else set()
    assert set(state) == {"learner", "ema", "optim", "torch_rng", "sampler_rng", "sampler", "step", *cuda}
    assert isinstance(state["sampler_rng"], dict) and state["step"] == STEPS
    assert state["sampler"]["rng"] == state["sampler_rng"] and state["sampler"]["blocks"] == [0]


def test_torn_last_metrics_line_is_dropped_other_damage_named(dataset, trained):
    path = trained / METRICS
    good = path.read_text()
    path.write_text(good + '{"step": 45, "loss": 0.12')  # a write cut short by a kill
    assert [e["step"] for _, e in read_metrics(path)] == list(range(5, STEPS + 1, 5))
    assert _train(dataset, trained, steps=STEPS + 5).step == STEPS + 5
    assert [e["step"] for _, e in read_metrics(path)][-2:] == [STEPS, STEPS + 5]
    lines = good.splitlines()
    path.write_text("\n".join([*lines[:2], lines[2][:10], *lines[3:]]) + "\n")
    assert "metrics.jsonl: line 3 is not a metrics record" in _resume_error(dataset, trained)
    path.write_text(good + '{"loss": 1.0}\n')  # complete but not a record
    assert f"line {len(lines) + 1} is not a metrics record" in _resume_error(dataset, trained)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_state_is_saved_and_restored(dataset, tmp_path, monkeypatch):
    def run(run_dir, steps):
        seed_everything(0)
        cfg = TrainerConfig(steps=steps, batch_size=4, log_every=5, checkpoint_every=10, ema_start=5,
                            progress=False, device="cuda", deterministic=True)
        return train("mf-diffuser", dataset, run_dir, OPTIONS, cfg)

    run(tmp_path / "straight", 30)
    assert "cuda_rng" in read_checkpoint(tmp_path / "straight" / CHECKPOINT)
    _interrupt_sampler_at(monkeypatch, 13, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "resumed", 30)
    monkeypatch.undo()
    torch.cuda.manual_seed_all(12345)  # the resumed run must not depend on the generator's state now
    run(tmp_path / "resumed", 30)
    assert_same_checkpoint(tmp_path / "resumed", tmp_path / "straight")
    assert not torch.are_deterministic_algorithms_enabled()  # the mode ends with the run


def test_deterministic_mode_is_scoped_to_the_run(dataset, tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    cfg = TrainerConfig(steps=3, batch_size=4, progress=False, device="cpu", deterministic=True)
    seen = []
    original = WindowSampler.sample

    def sample(self, *args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(WindowSampler, "sample", sample)
        train("mf-diffuser", dataset, tmp_path / "run", OPTIONS, cfg)
    assert seen[-3:] == [True, True, True]  # the 3 training batches (the build draws some before)
    assert not torch.are_deterministic_algorithms_enabled()


def test_save_checkpoint_without_cuda_has_no_cuda_state(tmp_path):
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA in use in this process")
    learner = torch.nn.Linear(2, 2)
    optim = torch.optim.AdamW(learner.parameters())

    class Sampler:
        rng = __import__("numpy").random.default_rng(0)

    save_checkpoint(tmp_path / CHECKPOINT, learner, learner, optim, Sampler(), 3)
    assert "cuda_rng" not in read_checkpoint(tmp_path / CHECKPOINT)


def test_ignored_signals_stay_ignored(dataset, tmp_path, monkeypatch):
    # a run started with SIGTERM ignored (as `nohup` does for SIGHUP) keeps ignoring it while training
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _interrupt_sampler_at(monkeypatch, 3, lambda: signal.raise_signal(signal.SIGTERM))
        assert _train(dataset, tmp_path / "run", steps=5).step == 5
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
