"""EMA of the weights: Lightning's `EMAWeightAveraging`, with the two settings this project needs.

What Lightning's callback does (lightning.pytorch.callbacks.weight_averaging): after every
optimizer step it updates an `AveragedModel` copy, θ_ema ← decay·θ_ema + (1 - decay)·θ; validation
during fit runs on the EMA weights (swapped in and back); every checkpoint's `state_dict` holds the
EMA weights and `current_model_state` the raw ones (plus `averaging_state`), and a resumed fit
restores both. So `validate --ckpt_path`, `generate --ckpt`, pretokenize, the next tokenizer stage
and the RL policy all read the EMA weights by default when a checkpoint has them; the raw ones stay
in `current_model_state`.

Differences from `EMAWeightAveraging` as it comes:
- `use_buffers=False` by default: buffers are copied from the model, not averaged. The models'
  buffers are counters and statistics (`train_steps`, the codebook's usage EMA) that an average
  would corrupt (a step counter averaged over steps is not the step).
- The raw weights are not overwritten by the EMA at the end of fit, so the last checkpoint keeps
  both, like every earlier one, and resuming it (e.g. with a larger max_steps) continues the raw
  trajectory rather than restarting from the EMA.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import EMAWeightAveraging


class EMA(EMAWeightAveraging):
    """Args: decay (per optimizer step), update_every_n_steps, update_starting_at_step (see
    EMAWeightAveraging); use_buffers: average buffers too (off: copied)."""

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1,
                 update_starting_at_step: int | None = None, use_buffers: bool = False, **kwargs: Any):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}; e.g. 0.999 (about a 1,000-step window)")
        super().__init__(decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step, use_buffers=use_buffers, **kwargs)
        self.decay = decay

    def on_train_end(self, trainer, pl_module) -> None:
        """Keep the raw weights (Lightning copies the EMA over them here)."""
