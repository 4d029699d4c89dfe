"""Optional diffusion refiner: rectified flow on the tokenizer's residual (REFERENCE.md "Diffusion refiner")."""
import torch

from modules.refiner.flow import as_velocity, flow_matching_loss, guided, sample_flow, time_grid
from modules.refiner.module import CodeEncoder, RefinerModule, load_refiner
from modules.refiner.net import RefinerConfig, RefinerNet

__all__ = ["RefinerModule", "RefinerNet", "RefinerConfig", "CodeEncoder", "load_refiner", "flow_matching_loss",
           "sample_flow", "guided", "as_velocity", "time_grid"]

torch.serialization.add_safe_globals([RefinerConfig])  # held in hyper-parameters; plain values only
