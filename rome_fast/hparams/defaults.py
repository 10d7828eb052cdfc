"""Hyperparameters per model (SPEC §4): the public code's values where it has them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rome_fast.model.loader import HUB_NAMES
from rome_fast.model.precision import check_precision

# The public code's context-template schedule: (length, count) pairs (rome_fast.edit.templates).
PUBLIC_SCHEDULE: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))


@dataclass(frozen=True)
class HParams:
    """What an edit needs besides the request (defaults: the paper's GPT-J / GPT2-XL runs)."""

    layer: int
    v_num_grad_steps: int = 20  # loop iterations; the last only evaluates (≤ 19 Adam steps)
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_early_stop_loss: float = 5e-2  # the public code's hard-coded threshold
    context_template_schedule: tuple[tuple[int, int], ...] = PUBLIC_SCHEDULE
    context_template_top_k: int = 5
    padding_side: str = "right"
    mom2_adjustment: bool = True  # False: C = I, the update direction is the key itself
    mom2_n_samples: int = 100_000
    mom2_dtype: str = "float32"
    mom2_max_length: int | None = None  # tokens per document; None: the context length
    stats_corpus: str = "wikipedia"
    v_precision: str = "fp32"  # matmuls of the v* loop: fp32, tf32 (CUDA) or bf16

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.v_num_grad_steps < 1:
            raise ValueError(f"v_num_grad_steps must be >= 1, got {self.v_num_grad_steps}")
        for name in ("v_lr", "clamp_norm_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("v_weight_decay", "kl_factor", "v_early_stop_loss"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_precision(self.v_precision)
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")

    def replace(self, **changes: object) -> HParams:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# The public code's per-model choices; SmolLM2's layer is ours, chosen by measurement.
HPARAMS: dict[str, HParams] = {
    "gpt2-xl": HParams(layer=17),
    "gpt-j-6b": HParams(layer=5),
    "gpt2-medium": HParams(layer=8, clamp_norm_factor=3.0),
    "gpt2-large": HParams(layer=12),
    # Layer 6 of 30: the best score S of a measured r-ROME sweep over layers 2–18 on 16 known
    # CounterFact facts (docs/results/smollm2-layer-sweep.md, `rome sweep`).
    "smollm2": HParams(layer=6, mom2_max_length=256),
    # Tiny random test models (4 layers): an inner layer.
    "tiny-gpt2": HParams(layer=1),
    "tiny-gptj": HParams(layer=1),
    "tiny-neox": HParams(layer=1),
    "tiny-llama": HParams(layer=1),
}

_HUB_TO_SHORT = {hub.lower(): short for short, hub in HUB_NAMES.items()}


def _short_name(name: str) -> str:
    short = name.removeprefix("random:").strip().rstrip("/").lower()
    return _HUB_TO_SHORT.get(short, short)


def hparams_for(name: str, *, layer: int | None = None) -> HParams:
    """The hyperparameters for model ``name`` (a ``load_model`` spec), ``layer`` overriding.

    ``random:<arch>`` gets ``<arch>``'s values. An unknown model with ``layer`` given gets
    the defaults at that layer; without it, a ValueError (there is no sensible guess).
    """
    base = HPARAMS.get(_short_name(name))
    if base is None:
        if layer is None:
            raise ValueError(
                f"no hyperparameters are known for model {name!r} (known: "
                f"{', '.join(HPARAMS)}); choose the edited layer: pass "
                f"layer=... (CLI: --layer) or HParams(layer=...)"
            )
        return HParams(layer=layer)
    return base if layer is None else base.replace(layer=layer)
