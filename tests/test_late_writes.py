"""An editor under test whose call was given up (``--timeout``) keeps running in its thread,
which cannot be killed: a write it makes after the harness put the weights back stops the run
before the next edit or batch, naming the call that hung. The writes here go through
``.data``, which moves no version counter: only the digest sees them."""

from __future__ import annotations

import threading

import pytest
import torch

from rome_fast.conform.batch_external import ExternalBatchEditor
from rome_fast.conform.batch_protocol import BatchInputs, CallableBatchEditor
from rome_fast.conform.batch_run import BatchSettings
from rome_fast.conform.external import ExternalEditor
from rome_fast.conform.protocol import CallableEditor, ConformInputs
from rome_fast.infra.errors import RunStoppedError
from tests.batch_editing import low_rank_spd
from tests.models import EDIT, TEMPLATES, fresh_model, key_dim, random_spd, tiny_hparams
from tests.test_batch_runs import FAMILY, METHODS

TIMEOUT = 0.1  # seconds: the late writer waits for the test, far longer
GIVEN_UP = "changed after the editor under test's {} was given up"


class LateWriter:
    """Waits until the test releases it, long past the time limit, then writes into ``W``."""

    def __init__(self) -> None:
        self.release, self.wrote = threading.Event(), threading.Event()

    def write_late(self, W: torch.Tensor) -> None:
        self.release.wait(30)
        W.data.add_(1e-3)  # no version counter moves
        self.wrote.set()

    def let_write(self) -> None:
        self.release.set()
        assert self.wrote.wait(30), "the late writer never wrote"


def test_a_hung_edit_writing_late_stops_the_run() -> None:
    loaded = fresh_model(FAMILY)
    hparams = tiny_hparams(FAMILY)
    late = LateWriter()

    def hangs_then_writes(inputs: ConformInputs) -> None:
        late.write_late(inputs.site.weight)

    C = random_spd(key_dim(loaded, hparams.layer))
    editor = ExternalEditor(
        CallableEditor(hangs_then_writes, "late"), loaded, hparams, C, TEMPLATES, timeout=TIMEOUT
    )
    with pytest.raises(ValueError, match="did not return within"):
        editor.edit(EDIT)
    late.let_write()
    with pytest.raises(RunStoppedError, match=GIVEN_UP.format("edit")):
        editor.edit(EDIT)


def test_a_hung_batch_writing_late_stops_the_run() -> None:
    loaded = fresh_model(FAMILY)
    method = METHODS["memit"]
    late = LateWriter()

    def hangs_then_writes(inputs: BatchInputs) -> None:
        site = inputs.loaded.adapter.edited_site(inputs.loaded.model, method.layers[0])
        late.write_late(site.weight)

    C = {layer: low_rank_spd(loaded, layer) for layer in method.layers}
    settings = BatchSettings(tiny_hparams(FAMILY), method, C, TEMPLATES, 0)
    editor = ExternalBatchEditor(
        lambda: CallableBatchEditor(hangs_then_writes, "late"), loaded, settings, TIMEOUT
    )
    with pytest.raises(ValueError, match="did not return within"):
        editor.edit_batch([EDIT], "memit", method_hparams=method)
    late.let_write()
    with pytest.raises(RunStoppedError, match=GIVEN_UP.format("batch")):
        editor.edit_batch([EDIT], "memit", method_hparams=method)
