"""Learning-rate schedules, warm-up and gradient accumulation, against hand-worked numbers."""

from __future__ import annotations

import pytest
import torch

from sbir_bench.config import TrainConfig
from sbir_bench.training.trainer import build_optimizer, lr_lambda


def multipliers(steps_per_epoch: int, **train) -> list:
    cfg = TrainConfig(**train)
    f = lr_lambda(cfg, steps_per_epoch)
    return [round(f(s), 6) for s in range(steps_per_epoch * cfg.epochs + 1)]


def test_cosine_per_step_without_warm_up():
    # 2 epochs x 2 steps: cos over 4 steps, 0.5 (1 + cos(pi s / 4)) for s = 0..4
    assert multipliers(2, epochs=2) == [1.0, 0.853553, 0.5, 0.146447, 0.0]


def test_linear_warm_up_then_cosine_per_step():
    # 1 warm-up epoch of 4 steps ramps 1/4 .. 4/4, then cosine over the remaining 4 steps
    assert multipliers(4, epochs=2, warmup_epochs=1) == [0.25, 0.5, 0.75, 1.0, 1.0, 0.853553, 0.5, 0.146447, 0.0]


def test_cosine_per_epoch_with_constant_warm_up_as_coop():
    # Dassl: epoch 0 at warmup_lr, then epoch e at 0.5 (1 + cos(pi (e - 1) / epochs)), held for the epoch
    got = multipliers(2, epochs=3, lr=0.002, warmup_epochs=1, warmup="constant", warmup_lr=1e-5, schedule="cosine-epoch")
    assert got == [0.005, 0.005, 1.0, 1.0, 0.75, 0.75, 0.25]


def test_constant_schedule_as_clip_at():
    assert multipliers(3, epochs=2, schedule="constant") == [1.0] * 7
    assert multipliers(2, epochs=2, schedule="constant", warmup_epochs=1) == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_parameter_groups_keep_their_own_rate_under_the_schedule():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))

        def param_groups(self, lr):
            return [{"params": [self.a]}, {"params": [self.b], "lr": lr / 100}]

    cfg = TrainConfig(lr=0.1, epochs=2)
    opt = build_optimizer(Two(), cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, 2))
    for _ in range(2):  # step 2 of 4: multiplier 0.5
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.0005])
