"""``rome-verify`` itself as an editor under test (each built-in or registered variant)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rome_fast.conform.protocol import ConformInputs
from rome_fast.editor import Editor, EditResult
from rome_fast.variants import get_variant


@dataclass
class OurEditor:
    """``rome_fast.editor.Editor`` with the harness's templates, C, hyperparameters and seed."""

    config: str = "r-rome"
    uncontrolled: list[str] = field(default_factory=list)
    _last: tuple[Editor, EditResult] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        get_variant(self.config)  # an unknown variant fails here, naming the known ones

    @property
    def name(self) -> str:
        return f"rome-verify[{self.config}]"

    def edit(self, inputs: ConformInputs) -> None:
        editor = Editor(
            inputs.loaded,
            hparams=inputs.hparams.replace(layer=inputs.layer),
            seed=inputs.seed,
            stats=inputs.C,
            templates=inputs.templates,
        )
        self._last = (editor, editor.edit(inputs.request, self.config))

    def revert(self) -> None:
        if self._last is None:
            raise ValueError("nothing to revert: no edit was made")
        editor, result = self._last
        editor.revert(result)
        self._last = None
