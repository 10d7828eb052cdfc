"""The model's state apart from its weights' values: what an editor must leave as it found it.

Training flags of every module, the hooks registered on every module (and the global module
hooks), each parameter's dtype, device and ``requires_grad``, and every buffer bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


@dataclass(frozen=True)
class ParameterFlags:
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool


@dataclass(frozen=True)
class ModelState:
    training: dict[str, bool]  # module name -> its training flag
    hooks: dict[str, frozenset[int]]  # "module name.hook dict" -> the hook handles' ids
    parameters: dict[str, ParameterFlags]
    buffers: dict[str, Tensor]  # copies


def _hook_tables(model: nn.Module) -> dict[str, dict[int, object]]:
    tables = {
        f"{name or 'model'}.{attr}": getattr(module, attr)
        for name, module in model.named_modules()
        for attr in HOOK_DICTS
        if hasattr(module, attr)
    }
    tables.update({f"torch.{attr}": getattr(module_globals, attr) for attr in GLOBAL_HOOK_DICTS})
    return tables


def snapshot(model: nn.Module) -> ModelState:
    return ModelState(
        training={name: m.training for name, m in model.named_modules()},
        hooks={where: frozenset(table) for where, table in _hook_tables(model).items()},
        parameters={
            name: ParameterFlags(p.dtype, p.device, p.requires_grad)
            for name, p in model.named_parameters()
        },
        buffers={name: b.detach().clone() for name, b in model.named_buffers()},
    )


def differences(before: ModelState, model: nn.Module) -> tuple[str, ...]:
    """What of ``before`` the model no longer has, one short phrase each."""
    now = snapshot(model)
    found = [
        f"{name or 'model'} left in {'training' if flag else 'eval'} mode"
        for name, flag in now.training.items()
        if before.training.get(name, flag) != flag
    ]
    found += [
        f"{len(ids - before.hooks.get(where, frozenset()))} hook(s) left in {where}"
        for where, ids in now.hooks.items()
        if ids - before.hooks.get(where, frozenset())
    ]
    found += [
        f"parameter {name} now {flags} (was {before.parameters[name]})"
        for name, flags in now.parameters.items()
        if name in before.parameters and flags != before.parameters[name]
    ]
    found += [
        f"buffer {name} changed"
        for name, b in now.buffers.items()
        if name not in before.buffers or not torch.equal(b, before.buffers[name])
    ]
    return tuple(found)


def reset(before: ModelState, model: nn.Module) -> None:
    """Put back what :func:`differences` reports (values of parameters excepted), so that the
    next case starts from the same state."""
    for name, m in model.named_modules():
        m.training = before.training.get(name, m.training)
    for where, table in _hook_tables(model).items():
        for handle in set(table) - before.hooks.get(where, frozenset()):
            del table[handle]
    with torch.no_grad():
        for name, p in model.named_parameters():
            flags = before.parameters[name]
            p.data = p.data.to(device=flags.device, dtype=flags.dtype)
            p.requires_grad_(flags.requires_grad)
        for name, b in model.named_buffers():
            b.copy_(before.buffers[name])
