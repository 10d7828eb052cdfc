"""Batched editors under test for ``rome eval --editor SPEC --method M`` (tests/
test_batch_eval_editor.py): each one wrong in one way a run must survive, as ``module:callable``
editors a user could write. ``tests.batch_conform_editors`` has the ones both harnesses share
(``raises_midway``, ``hangs``, ``touches_embedding``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rome_fast.conform.batch_protocol import BatchInputs, OurBatchEditor
from rome_fast.edit.ownership import stored_weight


@dataclass
class FailsOnBatch:
    """Ours, but the ``fails_on``-th batch it is given (from 1) is written and then raises."""

    fails_on: int = 2
    name: str = "fails-on-a-batch"
    uncontrolled: list[str] = field(default_factory=list)
    calls: int = 0
    ours: OurBatchEditor = field(default_factory=OurBatchEditor)

    def edit(self, inputs: BatchInputs) -> None:
        self.calls += 1
        self.ours.edit(inputs)
        if self.calls == self.fails_on:
            raise RuntimeError(f"planted failure after batch {self.calls}'s write")


def writes_nan(inputs: BatchInputs) -> None:
    """Ours, then one NaN in the last edited layer's weight."""
    OurBatchEditor().edit(inputs)
    module = inputs.loaded.adapter.edited_module(inputs.loaded.model, inputs.method.layers[-1])
    with torch.no_grad():
        stored_weight(module).view(-1)[0] = float("nan")


def wrong_shape(inputs: BatchInputs) -> None:
    """Replaces the first edited layer's weight by one with a row more."""
    module = inputs.loaded.adapter.edited_module(inputs.loaded.model, inputs.method.layers[0])
    weight = stored_weight(module)
    module.weight = nn.Parameter(torch.zeros(weight.shape[0] + 1, weight.shape[1]))
