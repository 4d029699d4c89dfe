"""Prefix-tuning GRPO (NF-RL) on the unified AR model: modules/rl/loss.py (math), module.py (GRPOModule)."""
from modules.rl.module import GRPOModule

__all__ = ["GRPOModule"]
