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


def _same_setting(a: ConformInputs, b: ConformInputs) -> bool:
    """Whether one Editor serves both (the same model, site, C, templates and settings)."""
    shared = ("loaded", "site", "C", "templates", "hparams")
    return all(getattr(a, f) is getattr(b, f) for f in shared) and a.seed == b.seed


@dataclass
class OurEditor:
    """Our ``Editor`` (``rome_fast.edit.editor``) with the harness's templates, C, hyperparameters
    and seed."""

    config: str | Variant = "r-rome"  # a registered name or a fn(UpdateInputs) -> RankOne
    uncontrolled: list[str] = field(default_factory=list)
    # one Editor per harness inputs (edits in sequence share it), and the edits not reverted
    _editor: tuple[ConformInputs, Editor] | None = field(default=None, repr=False)
    _applied: list[tuple[Editor, EditResult]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.config, str):
            get_variant(self.config)  # an unknown variant fails here, naming the known ones

    @property
    def name(self) -> str:
        config = self.config if isinstance(self.config, str) else self.config.__name__
        return f"rome-verify[{config}]"

    def _editor_for(self, inputs: ConformInputs) -> Editor:
        if self._editor is None or not _same_setting(self._editor[0], inputs):
            self._editor = (inputs, editor_for(inputs))
        return self._editor[1]

    def edit(self, inputs: ConformInputs) -> None:
        editor = self._editor_for(inputs)
        self._applied.append((editor, editor.edit(inputs.request, self.config)))

    def revert(self) -> None:
        """Undo the latest edit not yet reverted (edits in sequence: in reverse order)."""
        if not self._applied:
            raise ValueError("nothing to revert: no edit was made")
        editor, result = self._applied.pop()
        editor.revert(result)
