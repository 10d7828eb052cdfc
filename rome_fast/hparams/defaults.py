"""Hyperparameters per model (SPEC §4): the public code's values where it has them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rome_fast.model.loader import HUB_NAMES
from rome_fast.model.precision import check_precision

# The public code's context-template schedule: (length, count) pairs (rome_fast.edit.templates).
PUBLIC_SCHEDULE: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))


@dataclass(frozen=True)
class VStarOptions:
    """The target value v* optimization, shared by every method that optimizes a target."""

    num_grad_steps: int = 20  # loop iterations; the last only evaluates (≤ 19 Adam steps)
    lr: float = 0.5
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 5e-2  # the public code's hard-coded threshold
    context_template_schedule: tuple[tuple[int, int], ...] = PUBLIC_SCHEDULE
    context_template_top_k: int = 5
    padding_side: str = "right"
    precision: str = "fp32"  # matmuls of the v* loop: fp32, tf32 (CUDA) or bf16

    def __post_init__(self) -> None:
        if self.num_grad_steps < 1:
            raise ValueError(f"v_num_grad_steps must be >= 1, got {self.num_grad_steps}")
        for name in ("lr", "clamp_norm_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"{_public_name('v_star', name)} must be > 0, got {getattr(self, name)}"
                )
        for name in ("weight_decay", "kl_factor", "early_stop_loss"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{_public_name('v_star', name)} must be >= 0, got {getattr(self, name)}"
                )
        check_precision(self.precision)
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")


@dataclass(frozen=True)
class StatsOptions:
    """What the key second moment C is collected from, shared by every method that uses C
    (where it is read from, a file or a corpus the user gives, is ``stats.covariance``'s
    ``StatsSource``)."""

    n_samples: int = 100_000
    dtype: str = "float32"
    max_length: int | None = None  # tokens per document; None: the context length
    corpus: str = "wikipedia"

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(
                f"the statistics need at least one document, got n_samples={self.n_samples}"
            )


@dataclass(frozen=True)
class HParams:
    """What an edit needs besides the request (defaults: the paper's GPT-J / GPT2-XL runs): the
    shared v* and statistics options, and ROME's own (the layer, whether C is used at all)."""

    layer: int
    mom2_adjustment: bool = True  # False: C = I, the update direction is the key itself
    v_star: VStarOptions = VStarOptions()
    stats: StatsOptions = StatsOptions()

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")

    def replace(self, **changes: Any) -> HParams:
        """A copy with ``changes`` under their public names (``v_lr``, ``mom2_n_samples``, ...:
        ``PUBLIC_NAMES``) or this class's own field names."""
        own = {k: v for k, v in changes.items() if k not in PUBLIC_NAMES}
        groups: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if name in PUBLIC_NAMES:
                group, field_name = PUBLIC_NAMES[name]
                groups.setdefault(group, {})[field_name] = value
        for group, group_changes in groups.items():
            own[group] = dataclasses.replace(own.get(group, getattr(self, group)), **group_changes)
        return dataclasses.replace(self, **own)

    def as_record(self) -> dict[str, Any]:
        """JSON values under the public names (a run's identity, the edit log): the flat form
        every earlier version wrote, so that runs and logs written before compare equal."""
        record: dict[str, Any] = {"layer": self.layer, "mom2_adjustment": self.mom2_adjustment}
        for name, (group, field_name) in PUBLIC_NAMES.items():
            record[name] = getattr(getattr(self, group), field_name)
        return record


# The public code's (and every earlier version's) flat names -> (group, field in the group).
PUBLIC_NAMES: dict[str, tuple[str, str]] = {
    "v_num_grad_steps": ("v_star", "num_grad_steps"),
    "v_lr": ("v_star", "lr"),
    "v_weight_decay": ("v_star", "weight_decay"),
    "clamp_norm_factor": ("v_star", "clamp_norm_factor"),
    "kl_factor": ("v_star", "kl_factor"),
    "v_early_stop_loss": ("v_star", "early_stop_loss"),
    "context_template_schedule": ("v_star", "context_template_schedule"),
    "context_template_top_k": ("v_star", "context_template_top_k"),
    "padding_side": ("v_star", "padding_side"),
    "mom2_n_samples": ("stats", "n_samples"),
    "mom2_dtype": ("stats", "dtype"),
    "mom2_max_length": ("stats", "max_length"),
    "stats_corpus": ("stats", "corpus"),
    "v_precision": ("v_star", "precision"),
}


def _public_name(group: str, field_name: str) -> str:
    return next(k for k, v in PUBLIC_NAMES.items() if v == (group, field_name))


# The public code's per-model choices; SmolLM2's layer is ours, chosen by measurement.
HPARAMS: dict[str, HParams] = {
    "gpt2-xl": HParams(layer=17),
    "gpt-j-6b": HParams(layer=5),
    "gpt2-medium": HParams(layer=8, v_star=VStarOptions(clamp_norm_factor=3.0)),
    "gpt2-large": HParams(layer=12),
    # Layer 6 of 30: the best score S of a measured r-ROME sweep over layers 2–18 on 16 known
    # CounterFact facts (docs/results/smollm2-layer-sweep.md, `rome sweep`).
    "smollm2": HParams(layer=6, stats=StatsOptions(max_length=256)),
    # Tiny random test models (4 layers): an inner layer.
    "tiny-gpt2": HParams(layer=1),
    "tiny-gptj": HParams(layer=1),
    "tiny-neox": HParams(layer=1),
    "tiny-llama": HParams(layer=1),
}

_HUB_TO_SHORT = {hub.lower(): short for short, hub in HUB_NAMES.items()}


def short_model_name(name: str) -> str:
    """The key of ``HPARAMS`` for a ``load_model`` spec (a hub name maps to its short name)."""
    short = name.removeprefix("random:").strip().rstrip("/").lower()
    return _HUB_TO_SHORT.get(short, short)


def hparams_for(name: str, *, layer: int | None = None) -> HParams:
    """The hyperparameters for model ``name`` (a ``load_model`` spec), ``layer`` overriding.

    ``random:<arch>`` gets ``<arch>``'s values. An unknown model with ``layer`` given gets
    the defaults at that layer; without it, a ValueError (there is no sensible guess).
    """
    base = HPARAMS.get(short_model_name(name))
    if base is None:
        if layer is None:
            raise ValueError(
                f"no hyperparameters are known for model {name!r} (known: "
                f"{', '.join(HPARAMS)}); choose the edited layer: pass "
                f"layer=... (CLI: --layer) or HParams(layer=...)"
            )
        return HParams(layer=layer)
    return base if layer is None else base.replace(layer=layer)
