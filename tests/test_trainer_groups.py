"""The trainer's per-group optimisation: each ParamGroup gets its own learning rate and gradient clip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mfdiffuser.algos.base import LossOutput, ParamGroup
from mfdiffuser.algos.trainer import TrainerConfig, clip_groups, fit, param_groups, read_metrics
from test_baselines import ProbeSampler, one_thread  # noqa: F401 (autouse fixture)


class TwoHeads(nn.Module):
    """Two scalar parameters with loss a^2 + b^2, trained as one group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(1.0))

    def loss(self, batch: object) -> LossOutput:
        return LossOutput(self.a**2 + self.b**2, {})


class GroupedHeads(TwoHeads):
    """The same, with ``param_groups()`` from (name of the parameter, lr, clip) specs."""

    def __init__(self, specs: list[tuple[str, float | None, float | None]]) -> None:
        super().__init__()
        self.specs = specs

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup(name, [getattr(self, name)], lr, clip) for name, lr, clip in self.specs]


def test_groups_get_their_own_learning_rate(tmp_path):
    model = GroupedHeads([("a", 1e-1, None), ("b", 1e-3, None)])
    cfg = TrainerConfig(steps=1, lr=5e-2, progress=False, ema_start=0)
    fit(model, ProbeSampler(), tmp_path, cfg)
    # Adam's first step moves each parameter by its learning rate (sign of the gradient)
    assert model.a.item() == pytest.approx(1.0 - 1e-1, abs=1e-6)
    assert model.b.item() == pytest.approx(1.0 - 1e-3, abs=1e-6)


def test_default_lr_and_grad_norm_logged_per_group(tmp_path):
    model = GroupedHeads([("a", None, None), ("b", None, 0.0)])
    cfg = TrainerConfig(steps=2, lr=1e-2, progress=False, log_every=1, grad_clip=0.5)
    fit(model, ProbeSampler(), tmp_path, cfg)
    assert model.a.item() == pytest.approx(1.0 - 2e-2, abs=1e-4)
    entry = read_metrics(tmp_path / "metrics.jsonl")[0][1]
    assert entry["grad_norm/a"] == pytest.approx(2.0)  # d(a^2)/da at a = 1, before clipping
    assert math.isnan(entry["grad_norm/b"])  # clip 0: not clipped, not measured
    assert "grad_norm" not in entry


def test_clip_groups_clips_each_group_on_its_own():
    p, q = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    p.grad, q.grad = torch.tensor([3.0, 4.0]), torch.tensor([10.0])
    norms = clip_groups([ParamGroup("p", [p], 1.0, 1.0), ParamGroup("q", [q], 1.0, 100.0)])
    assert norms == {"grad_norm/p": pytest.approx(5.0), "grad_norm/q": pytest.approx(10.0)}
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8]), atol=1e-5)  # clipped to norm 1
    assert torch.equal(q.grad, torch.tensor([10.0]))  # under its clip: untouched


def test_without_param_groups_one_group_with_trainer_defaults():
    groups = param_groups(TwoHeads(), TrainerConfig(lr=3e-3, grad_clip=2.0))
    assert [(g.name, len(g.params), g.lr, g.clip) for g in groups] == [("all", 2, 3e-3, 2.0)]


@pytest.mark.parametrize(
    "specs, message",
    [
        ([("a", None, None)], "in no group"),
        ([("a", None, None), ("a", None, None), ("b", None, None)], "also in another group"),
        ([("a", -1.0, None), ("b", None, None)], "needs lr > 0"),
        ([("a", None, float("nan")), ("b", None, None)], "needs lr > 0"),
    ],
)
def test_bad_groups_are_refused(specs, message):
    with pytest.raises(ValueError, match=message):
        param_groups(GroupedHeads(specs), TrainerConfig())
