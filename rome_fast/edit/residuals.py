"""How far an edited module's output is from the value asked of it, read from the module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rome_fast.edit.ownership import stored_weight


@torch.no_grad()
def relative_residual(module: nn.Module, key: Tensor, value: Tensor) -> float:
    """‖module(k) − v‖ / ‖v‖, reading the edited module itself (bias included)."""
    weight = stored_weight(module)
    out = module(key.to(device=weight.device, dtype=weight.dtype)[None])[0].float()
    target = value.to(out.device)
    return float(torch.linalg.vector_norm(out - target) / torch.linalg.vector_norm(target))
