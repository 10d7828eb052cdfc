"""The essence prompt read out on the model with any value of the edited weight: what the v*
loop's KL term bounds, measured black-box (the ``essence_drift`` property).

The v* loop penalizes KL(p_edited ‖ p_before) of the next-token distribution at the subject's
last token of ``"{subject} is a"`` (``rome_fast.edit.value``); an editor whose loop drops or
weakens that term writes a v* that moves this distribution further than the reference's. The
drift is a first-order effect of the KL term's part of v* (its gradient is the direction the
term pushes along), so it shows that part undrowned by the rest of v*.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray

from rome_fast.edit.request import EditRequest
from rome_fast.edit.value_batch import ESSENCE_PROMPT
from rome_fast.model.loader import LoadedModel
from rome_fast.model.site import EditedSite
from rome_fast.model.tokens import subject_last_index

F64 = NDArray[np.float64]
EssenceReadout = Callable[[F64], F64]  # edited weight (d_out, d_in) -> log-probabilities (V,)


def essence_readout(loaded: LoadedModel, site: EditedSite, request: EditRequest) -> EssenceReadout:
    """A function of a value W of the edited weight: the essence prompt's next-token
    log-probabilities (float64, (V,)) with W written in the weight's dtype; the weight is put
    back after each call, every other parameter is read as it is then."""
    ids, position = subject_last_index(loaded.tokenizer, ESSENCE_PROMPT, request.subject)
    weight = site.weight  # (d_out, d_in) view: writes go through to the parameter
    input_ids = torch.tensor([ids], device=weight.device)

    def read(W: F64) -> F64:
        saved = weight.detach().clone()
        try:
            with torch.no_grad():
                weight.copy_(torch.from_numpy(W).to(weight.dtype))
                logits = loaded.model(input_ids=input_ids).logits[0, position]
            return torch.log_softmax(logits.double(), dim=-1).cpu().numpy()
        finally:
            with torch.no_grad():
                weight.copy_(saved)

    return read
