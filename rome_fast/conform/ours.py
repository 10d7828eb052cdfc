"""``rome-verify`` itself as an editor under test (each built-in or registered variant)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rome_fast.conform.protocol import ConformInputs
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditResult
from rome_fast.methods.rome.update import Variant
from rome_fast.methods.rome.variants import get_variant


def editor_for(inputs: ConformInputs) -> Editor:
    """Our editor with exactly the harness's inputs (templates, C, hyperparameters, seed)."""
    return Editor(
        inputs.loaded,
        hparams=inputs.hparams.replace(layer=inputs.layer),
        seed=inputs.seed,
        stats=inputs.C,
        templates=inputs.templates,
    )


@dataclass
class OurEditor:
    """Our ``Editor`` (``rome_fast.edit.editor``) with the harness's templates, C, hyperparameters
    and seed."""

    config: str | Variant = "r-rome"  # a registered name or a fn(UpdateInputs) -> RankOne
    uncontrolled: list[str] = field(default_factory=list)
    _last: tuple[Editor, EditResult] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.config, str):
            get_variant(self.config)  # an unknown variant fails here, naming the known ones

    @property
    def name(self) -> str:
        config = self.config if isinstance(self.config, str) else self.config.__name__
        return f"rome-verify[{config}]"

    def edit(self, inputs: ConformInputs) -> None:
        editor = editor_for(inputs)
        self._last = (editor, editor.edit(inputs.request, self.config))

    def revert(self) -> None:
        if self._last is None:
            raise ValueError("nothing to revert: no edit was made")
        editor, result = self._last
        editor.revert(result)
        self._last = None
