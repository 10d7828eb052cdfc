"""The edited site: the module ROME edits in one layer, resolved once from (model, layer).

Every consumer (the editors, keys, value, statistics, conformance, evaluation) takes this
object instead of an int layer that each would turn back into a module.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from rome_fast.model.weights import module_bias, stores_transposed, weight_matrix


@dataclass(frozen=True)
class EditedSite:
    layer: int
    module_name: str  # dotted name in the model, e.g. "transformer.h.1.mlp.c_proj"
    module: nn.Module  # the MLP output projection (Linear or Conv1D)

    @classmethod
    def of(cls, model: nn.Module, layer: int, module_name: str) -> EditedSite:
        module = model.get_submodule(module_name)
        stores_transposed(module)  # an unsupported module type is refused here, once
        return cls(layer, module_name, module)

    @property
    def weight(self) -> Tensor:
        """The (d_out, d_in) view of the weight; writes go through to the parameter. Read
        from the module on each use: a view taken once would miss a replaced parameter."""
        return weight_matrix(self.module)

    @property
    def bias(self) -> Tensor | None:
        """The output bias (d_out,), or None."""
        return module_bias(self.module)

    @property
    def d_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.weight.shape[0])
