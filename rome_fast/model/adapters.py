"""One small adapter per architecture family: where ROME edits, and tokenizer facts."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rome_fast.model.site import EditedSite


@dataclass(frozen=True)
class Adapter:
    """Names the edited MLP output projection of one architecture family.

    The edited module's *input* at the subject's last token is the key k and its
    *output* is the value; see SPEC §1.
    """

    family: str
    model_types: tuple[str, ...]
    layers_path: str  # dotted path of the nn.ModuleList of blocks
    mlp_name: str  # MLP module inside one block
    proj_name: str  # edited projection inside the MLP
    final_norm_path: str  # final layer norm before the unembedding

    def layers(self, model: nn.Module) -> nn.ModuleList:
        blocks = model.get_submodule(self.layers_path)
        assert isinstance(blocks, nn.ModuleList)
        return blocks

    def n_layers(self, model: nn.Module) -> int:
        return len(self.layers(model))

    def check_layer(self, model: nn.Module, layer: int) -> None:
        n = self.n_layers(model)
        if not 0 <= layer < n:
            raise ValueError(
                f"layer {layer} is out of range for this {self.family} model with "
                f"{n} layers; choose a layer in 0..{n - 1}"
            )

    def mlp_module_name(self, layer: int) -> str:
        return f"{self.layers_path}.{layer}.{self.mlp_name}"

    def mlp(self, model: nn.Module, layer: int) -> nn.Module:
        self.check_layer(model, layer)
        return model.get_submodule(self.mlp_module_name(layer))

    def edited_module_name(self, layer: int) -> str:
        return f"{self.mlp_module_name(layer)}.{self.proj_name}"

    def edited_module(self, model: nn.Module, layer: int) -> nn.Module:
        self.check_layer(model, layer)
        return model.get_submodule(self.edited_module_name(layer))

    def edited_site(self, model: nn.Module, layer: int) -> EditedSite:
        """The edited module of ``layer`` resolved once (see ``rome_fast.model.site``)."""
        self.check_layer(model, layer)
        return EditedSite.of(model, layer, self.edited_module_name(layer))

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        self.check_layer(model, layer)
        return self.layers(model)[layer]


ADAPTERS: tuple[Adapter, ...] = (
    Adapter("gpt2", ("gpt2",), "transformer.h", "mlp", "c_proj", "transformer.ln_f"),
    Adapter("gpt-j", ("gptj",), "transformer.h", "mlp", "fc_out", "transformer.ln_f"),
    Adapter(
        "gpt-neox",
        ("gpt_neox",),
        "gpt_neox.layers",
        "mlp",
        "dense_4h_to_h",
        "gpt_neox.final_layer_norm",
    ),
    Adapter(
        "llama", ("llama", "mistral", "qwen2"), "model.layers", "mlp", "down_proj", "model.norm"
    ),
)


def supported_model_types() -> list[str]:
    return [t for a in ADAPTERS for t in a.model_types]


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a Hugging Face model, chosen by ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise ValueError(
        f"unsupported model type {model_type!r}: rome_fast edits "
        f"{', '.join(supported_model_types())} models"
    )
