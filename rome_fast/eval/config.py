"""A run's configuration: every option that changes an edit or a score. Its identity
(:meth:`RunConfig.comparable`) is what a resumed run must share with the one it continues."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MODES = ("single", "sequential")
DEGRADE_MODES = ("none", "zero", "flip")  # rome_fast.eval.degraded: the broken editors


@dataclass(frozen=True)
class RunConfig:
    model: str
    data: str
    variants: tuple[str, ...] = ("rome", "r-rome", "p-rome")
    layer: int | None = None  # the edited layer (None: the model's default)
    impl: str = "fast"  # "naive": the public code's compute flow
    v_precision: str = "fp32"
    dtype: str = "float32"
    modes: tuple[str, ...] = ("single",)
    limit: int | None = None
    offset: int = 0
    seed: int = 0
    batch_size: int = 16
    n_generations: int = 10  # the paper's entropy uses ten generations per edit
    generation_tokens: int = 50
    collapse_factor: float = 10.0  # |Δ| above this × the running median flags a collapse
    collapse_min_history: int = 5  # edits needed before the |Δ| rule applies
    collapse_entropy_ratio: float = 0.5  # entropy below this × the unedited model's flags one
    collapse_entropy: float | None = None  # an absolute threshold instead of the ratio
    glue_every: int = 0  # 0: no downstream checks
    glue_data: str | None = None
    glue_n: int = 50
    glue_shots: int = 2
    checkpoint_every: int = 1
    degrade: str = "none"  # "zero" / "flip": a deliberately broken editor, to test the gate
    # Where C comes from: each changes every edit, so each is part of the run's identity.
    stats_npz: str | None = None
    stats_corpus: str | None = None
    stats_samples: int | None = None  # None: the model's default
    hparams: dict[str, Any] | None = None  # the editor's full hyperparameters, when known
    # The fixed context templates (--templates FILE; None: sampled from the model, seeded).
    templates: tuple[str, ...] | None = None
    # What the files named above hold (SHA-256; the corpus's content identifier): a file
    # changed under the same path is another run.
    input_digests: dict[str, str] | None = None
    # A batched method (``--method``): its facts are edited ``facts_per_batch`` at a time
    # with these hyperparameters, the run's one variant named after it. None: ROME variants.
    method: str | None = None
    facts_per_batch: int | None = None
    method_hparams: dict[str, Any] | None = None
    # The editor under test writing a batched method's batches (--editor: its spec, --variant,
    # --editor-path and the name it gives); None: ours.
    editor: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes}")
        if not self.variants:
            raise ValueError("give at least one variant")
        if self.degrade not in DEGRADE_MODES:
            raise ValueError(f"degrade must be one of {DEGRADE_MODES}, got {self.degrade!r}")
        if self.glue_every < 0 or self.checkpoint_every < 1 or self.n_generations < 1:
            raise ValueError("glue_every >= 0, checkpoint_every >= 1 and n_generations >= 1")
        if self.offset < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError(f"offset >= 0 and limit >= 1, got {self.offset} and {self.limit}")
        if (self.method is None) != (self.facts_per_batch is None):
            raise ValueError("a batched method and its facts per batch are given together")
        if self.facts_per_batch is not None and self.facts_per_batch < 1:
            raise ValueError(f"facts_per_batch must be at least 1, got {self.facts_per_batch}")
        if self.batch_size < 1 or self.generation_tokens < 1 or self.glue_n < 1:
            raise ValueError("batch_size, generation_tokens and glue_n must be at least 1")

    def comparable(self) -> dict[str, Any]:
        """The options a resumed run must share with the one it continues."""
        keep = asdict(self)
        keep.pop("checkpoint_every")
        return keep
