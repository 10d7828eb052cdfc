"""Which weights an editor owns: the stored weight it saves and copies back, and a fingerprint
of each weight after its last write, so that undoing over another writer's change is refused
(``ForeignWriteError``) instead of silently discarding that change."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from rome_fast.infra.errors import RunStoppedError
from rome_fast.solve.low_rank import Update

Fingerprint = tuple[int, str]  # the tensor's in-place version counter, a digest of its bytes


class ForeignWriteError(RunStoppedError):
    """A weight the editor manages was changed by someone else since its last write."""


def stored_weight(module: nn.Module) -> Tensor:
    """The weight parameter as stored (any orientation): what copies save and restore."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


def copy_weight(module: nn.Module, weight: Tensor) -> None:
    with torch.no_grad():
        stored_weight(module).copy_(weight)


def fingerprint(module: nn.Module) -> Fingerprint:
    """The stored weight's in-place version counter and a digest of its bytes."""
    weight = stored_weight(module)
    data = weight.detach().contiguous().view(torch.uint8).cpu().numpy()
    return weight._version, hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


def require_own(module: nn.Module, module_name: str, noted: Fingerprint, action: str) -> None:
    """Refuse ``action`` over a weight someone else has written since ``noted`` was taken.

    The version counter alone would also refuse after a write of the same bytes; the digest
    alone would cost a hash of the weight every time: a changed counter is checked by digest.
    """
    version, digest = noted
    if stored_weight(module)._version != version and fingerprint(module)[1] != digest:
        raise ForeignWriteError(
            f"cannot {action}: {module_name}.weight was changed by someone else (another "
            "Editor on this model, or code writing the weight) since this editor's last "
            "edit, and copying back would discard that change; undo the other writer's "
            "edits first (the last edit first), then this editor's"
        )


def require_finite_weights(model: nn.Module, update: Update) -> None:
    """Raise when a site of ``update`` left its weight non-finite (the caller restores it)."""
    for site in update:
        weight = stored_weight(model.get_submodule(site.module_name))
        if not bool(torch.isfinite(weight).all()):
            raise ValueError(
                f"the edit made {site.module_name}.weight non-finite (overflow in its dtype "
                f"{weight.dtype}); the model was restored; use a wider dtype"
            )
