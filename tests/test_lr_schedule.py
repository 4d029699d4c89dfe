"""The learning-rate schedule: warm-up + cosine over steps, and over the clock where a time limit binds."""
import time

import pytest
import torch


def test_warmup_cosine_schedule():
    from modules.common.lr_schedule import warmup_cosine

    f = warmup_cosine(10, 110, cosine=True, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))
    flat = warmup_cosine(10, 110, cosine=False)
    assert flat(5) == pytest.approx(0.6) and flat(100) == 1.0
    with pytest.raises(ValueError, match="min_ratio"):
        warmup_cosine(10, 100, min_ratio=1.5)


def test_cosine_follows_whichever_budget_is_further_used():
    from modules.common.lr_schedule import warmup_cosine

    clock = {"t": 0.0}
    f = warmup_cosine(10, 110, min_ratio=0.1, time_fraction=lambda: clock["t"])
    assert f(60) == pytest.approx(0.55)          # steps half used, clock unused: the step schedule
    clock["t"] = 1.0
    assert f(20) == pytest.approx(0.1)           # clock used up: the bottom, whatever the step
    assert f(5) == pytest.approx(0.6)            # warm-up stays step-keyed


class _SleepyRegression:
    """A LightningModule whose steps take a known time, so a 1.5 s `max_time` stops it long before its
    `max_steps`."""

    @staticmethod
    def build():
        import lightning as L

        from modules.common.lr_schedule import trainer_schedule

        class Module(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(4, 1)
                self.lrs = []

            def training_step(self, batch, batch_idx):
                time.sleep(0.03)
                self.lrs.append(self.optimizers().param_groups[0]["lr"])
                return self.layer(batch).pow(2).mean()

            def train_dataloader(self):
                return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4)

            def configure_optimizers(self):
                opt = torch.optim.SGD(self.parameters(), lr=1.0)
                sched = torch.optim.lr_scheduler.LambdaLR(opt, trainer_schedule(self._trainer, 2, cosine=True))
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        return Module()


def test_a_time_stopped_run_ends_at_the_bottom_of_its_schedule():
    """The bug this guards: a cosine over 10,000 steps in a run that max_time stops after ~50 kept the
    rate at its peak to the end (the quickstart's tokenizer on a slow CPU)."""
    import lightning as L

    module = _SleepyRegression.build()
    trainer = L.Trainer(max_steps=10_000, max_time={"seconds": 1.5}, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module)
    assert trainer.global_step < 200                     # the clock stopped it
    assert module.lrs[-1] < 0.2                          # ... at the bottom of the cosine (0.1)
    assert max(module.lrs) > 0.9                         # after peaking
    assert all(a >= b - 1e-9 for a, b in zip(module.lrs[2:], module.lrs[3:]))   # monotone after warm-up


def test_without_a_time_limit_the_schedule_is_the_step_schedule():
    import lightning as L

    module = _SleepyRegression.build()
    trainer = L.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module)
    from modules.common.lr_schedule import warmup_cosine

    expected = warmup_cosine(2, 12, min_ratio=0.1)
    assert module.lrs == pytest.approx([expected(s) for s in range(12)])
