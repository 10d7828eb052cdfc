"""The targets z of n facts in one optimization (``rome_fast.edit.batch_targets``): the same as
n separate runs, whatever the batch order, each fact stopping and clamped on its own; one fact
is ROME's v* loop with MEMIT's norms; bad input names the fact."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, ClassVar

import pytest
import torch

from benchmarks.naive_batch import naive_targets
from rome_fast.edit import batch_targets, value
from rome_fast.edit.batch import hidden_at_subjects
from rome_fast.edit.batch_targets import BatchTargets, compute_batch_targets
from rome_fast.edit.request import EditRequest
from rome_fast.edit.value import compute_v_star
from rome_fast.hparams.defaults import VStarOptions
from tests.models import TEMPLATES, at, tiny_hparams, tiny_model

LAYER = 1
STEPS = 6  # 5 Adam steps, then an evaluation
# GPT-2, GPT-NeoX and Llama with grouped-query attention (2 key/value heads for 4)
TARGET_FAMILIES = ("tiny-gpt2", "tiny-neox", "tiny-llama")
# Targets of one to four tokens, subjects first and mid-prompt.
REQUESTS = [
    EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"),
    EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English"),
    EditRequest("{} plays the", "Miles Davis", "violin and the piano"),
    EditRequest("{}, which is headquartered in", "Toyota", "Paris"),
]
# The same facts in another batch order: measured bit-identical to REQUESTS' (every family,
# both loss settings below), so the order alone sets no floor. The floor is that of the
# batch against one fact at a time, where the padded width, and so the summation order,
# differs: at most 1.8e-6 of ‖δ_i‖ and 5.0e-7 of a loss (3 families × 2 loss settings,
# 2026-12-07). 16× margins:
DELTA_TOLERANCE = 3e-5
LOSS_TOLERANCE = 8e-6
# Loss settings: the public loss (weight decay relative to ‖h‖; the clamp does not bind), and
# without weight decay (the NLL falls at every step, so a threshold stops the facts at
# different steps; the clamp binds).
LOSSES = {"public": {}, "no weight decay": {"v_weight_decay": 0.0}}


def options(family: str, **changes: object) -> VStarOptions:
    """A run that never stops early (the loss is never below 0) unless ``changes`` say so."""
    settings = {"v_num_grad_steps": STEPS, "v_early_stop_loss": 0.0, **changes}
    return tiny_hparams(family, **settings).v_star


def relative_errors(got: torch.Tensor, want: torch.Tensor) -> list[float]:
    """Per column (fact): ‖got_i − want_i‖ / ‖want_i‖; a zero column (a fact stopped before
    its first step) must be matched exactly (0, else inf)."""
    difference, norm = (got - want).norm(dim=0), want.norm(dim=0)
    exact = torch.where(difference == 0, 0.0, torch.inf)
    return torch.where(norm > 0, difference / norm, exact).tolist()


def assert_same_facts(got: BatchTargets, want: BatchTargets) -> None:
    """Same steps per fact, losses and δ to the measured floor; z = h + δ exactly."""
    assert got.adam_steps == want.adam_steps
    for fact, (mine, theirs) in enumerate(zip(got.loss_traces, want.loss_traces, strict=True)):
        assert mine == pytest.approx(theirs, rel=LOSS_TOLERANCE), f"fact {fact}"
    errors = relative_errors(got.deltas, want.deltas)
    assert max(errors) <= DELTA_TOLERANCE, errors
    assert max(relative_errors(got.hidden, want.hidden)) <= DELTA_TOLERANCE
    assert torch.equal(got.targets, got.hidden + got.deltas)


def one_at_a_time(family: str, opts: VStarOptions) -> BatchTargets:
    """Each request run alone (n = 1), the results side by side as one batch's."""
    loaded = tiny_model(family)
    alone = [
        compute_batch_targets(loaded, LAYER, [request], TEMPLATES, opts) for request in REQUESTS
    ]
    return BatchTargets(
        targets=torch.cat([a.targets for a in alone], 1),
        deltas=torch.cat([a.deltas for a in alone], 1),
        hidden=torch.cat([a.hidden for a in alone], 1),
        loss_traces=[a.loss_traces[0] for a in alone],
        loss_steps=[a.loss_steps[0] for a in alone],
        adam_steps=[a.adam_steps[0] for a in alone],
        seconds=sum(a.seconds for a in alone),
    )


def first_below(trace: list[float], threshold: float) -> int:
    """The iteration at which a run with this threshold stops (the last one if none)."""
    return next((i for i, loss in enumerate(trace) if loss < threshold), len(trace) - 1)


def staggered_threshold(traces: list[list[float]]) -> float:
    """An early-stop threshold, read off runs that never stop, at which the facts stop at as
    many different iterations as possible: a midpoint between two consecutive losses, the one
    farthest from every loss among the best."""
    losses = sorted({loss for trace in traces for loss in trace})
    candidates = [(low + high) / 2 for low, high in itertools.pairwise(losses)]

    def spread(threshold: float) -> tuple[int, float]:
        stops = {first_below(trace, threshold) for trace in traces}
        return len(stops), min(abs(loss - threshold) for loss in losses)

    return max(candidates, key=spread)


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("family", TARGET_FAMILIES)
def test_the_batch_equals_one_fact_at_a_time(family: str, loss: str) -> None:
    opts = options(family, **LOSSES[loss])
    batch = compute_batch_targets(tiny_model(family), LAYER, REQUESTS, TEMPLATES, opts)
    assert_same_facts(batch, one_at_a_time(family, opts))


# Read-out group budgets, in reads of tiny Llama's float32 logits (50257 tokens). The facts
# have 4, 4, 13 and 4 reads (3 templates × target tokens, plus the essence prompt): each fact
# alone; facts 0 and 1 together, then 2 and 3 each alone; all four together.
READOUT_BUDGETS = {"fact by fact": 0, "mixed": 8, "all": 25}


@pytest.mark.parametrize("budget", list(READOUT_BUDGETS))
def test_the_read_out_groups_change_nothing(monkeypatch: pytest.MonkeyPatch, budget: str) -> None:
    """The unembedding and log-softmax run per group of facts; any grouping gives the same
    targets as one fact at a time."""
    monkeypatch.setattr(value, "READOUT_GROUP_BYTES", READOUT_BUDGETS[budget] * 50257 * 4)
    opts = options("tiny-llama")
    batch = compute_batch_targets(tiny_model("tiny-llama"), LAYER, REQUESTS, TEMPLATES, opts)
    assert_same_facts(batch, one_at_a_time("tiny-llama", opts))


# How the facts are batched: by suffix width (the default), or all in one batch, where the
# stopped facts leave the passes of the others.
BATCHING = {"by width": batch_targets.GROUP_COST_CELLS, "one batch": float("inf")}


@pytest.mark.parametrize("batching", list(BATCHING))
@pytest.mark.parametrize("family", TARGET_FAMILIES)
def test_facts_stop_early_each_on_its_own_loss(
    monkeypatch: pytest.MonkeyPatch, family: str, batching: str
) -> None:
    """A threshold that stops the facts at different steps: a stopped fact's δ stays where it
    stopped while the others go on, as if it had run alone."""
    monkeypatch.setattr(batch_targets, "GROUP_COST_CELLS", BATCHING[batching])
    never = compute_batch_targets(
        tiny_model(family), LAYER, REQUESTS, TEMPLATES, options(family, v_weight_decay=0.0)
    )
    threshold = staggered_threshold(never.loss_traces)
    stops = [first_below(trace, threshold) for trace in never.loss_traces]
    assert len(set(stops)) >= 3, f"no threshold staggers the stops: {never.loss_traces}"
    # the losses are far from the threshold against their floor: no stop is a rounding flip
    margin = min(abs(x - threshold) / threshold for trace in never.loss_traces for x in trace)
    assert margin > 10 * LOSS_TOLERANCE, margin
    opts = options(family, v_weight_decay=0.0, v_early_stop_loss=threshold)
    batch = compute_batch_targets(tiny_model(family), LAYER, REQUESTS, TEMPLATES, opts)
    assert batch.adam_steps == stops
    assert_same_facts(batch, one_at_a_time(family, opts))


@pytest.mark.parametrize("family", TARGET_FAMILIES)
def test_the_batch_order_changes_nothing(family: str) -> None:
    loaded, opts = tiny_model(family), options(family)
    order = [2, 0, 3, 1]
    batch = compute_batch_targets(loaded, LAYER, REQUESTS, TEMPLATES, opts)
    shuffled = compute_batch_targets(loaded, LAYER, [REQUESTS[i] for i in order], TEMPLATES, opts)
    back = [order.index(i) for i in range(len(order))]  # shuffled column of each request
    restored = BatchTargets(
        targets=shuffled.targets[:, back],
        deltas=shuffled.deltas[:, back],
        hidden=shuffled.hidden[:, back],
        loss_traces=[shuffled.loss_traces[i] for i in back],
        loss_steps=[shuffled.loss_steps[i] for i in back],
        adam_steps=[shuffled.adam_steps[i] for i in back],
        seconds=shuffled.seconds,
    )
    assert_same_facts(restored, batch)


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("family", TARGET_FAMILIES)
def test_one_fact_is_romes_delta_with_the_norms_rescaled(family: str, loss: str) -> None:
    """The relation tested: ROME's loss scales its clamp and weight decay by ‖v_init‖ (the MLP
    output), MEMIT's by ‖h‖ (the block output). With the clamp factor times ‖v_init‖/‖h‖ and
    the weight decay times ‖h‖²/‖v_init‖², the two losses are one function of δ, so z − h is
    ROME's δ (measured bit-identical on these models), and its steps and losses ROME's."""
    loaded, request = tiny_model(family), REQUESTS[0]
    rome_options = options(family, **LOSSES[loss])
    rome = compute_v_star(*at(loaded, LAYER), request, TEMPLATES, rome_options)
    h_norm = float(hidden_at_subjects(loaded, LAYER, [request]).norm())
    v_norm = float(rome.v_init.norm())
    rescaled = dataclasses.replace(
        rome_options,
        clamp_norm_factor=rome_options.clamp_norm_factor * v_norm / h_norm,
        weight_decay=rome_options.weight_decay * h_norm**2 / v_norm**2,
    )
    z = compute_batch_targets(loaded, LAYER, [request], TEMPLATES, rescaled)
    assert z.adam_steps == [rome.adam_steps]
    assert z.loss_traces[0] == pytest.approx(rome.loss_trace, rel=LOSS_TOLERANCE)
    assert relative_errors(z.targets - z.hidden, rome.delta[:, None])[0] <= DELTA_TOLERANCE


def test_the_hidden_state_is_the_one_the_schedule_reads() -> None:
    """h is block ``layer``'s output at each bare prompt's subject-last token, as
    ``edit.batch`` reads it for the residual (a full forward: measured 1.3e-7 of ‖h_i‖)."""
    loaded = tiny_model("tiny-llama")
    batch = compute_batch_targets(loaded, LAYER, REQUESTS, TEMPLATES, options("tiny-llama"))
    read = hidden_at_subjects(loaded, LAYER, REQUESTS)
    assert max(relative_errors(batch.hidden, read)) <= DELTA_TOLERANCE


@pytest.mark.parametrize("family", TARGET_FAMILIES)
def test_each_fact_is_clamped_to_its_own_ball_of_h(family: str) -> None:
    """A clamp that binds at once, no weight decay: every ‖δ_i‖ ends on its own radius
    clamp · ‖h_i‖ (not ‖v_init‖'s, not another fact's)."""
    factor = 1e-3
    opts = options(family, clamp_norm_factor=factor, v_weight_decay=0.0)
    batch = compute_batch_targets(tiny_model(family), LAYER, REQUESTS, TEMPLATES, opts)
    radii = factor * batch.hidden.norm(dim=0)
    assert batch.deltas.norm(dim=0).tolist() == pytest.approx(radii.tolist(), rel=1e-4)


def test_a_layout_wider_than_the_context_is_not_refused() -> None:
    """Each prompt fits tiny GPT-2's 256 tokens, but aligning one subject near the start with
    one near the end makes the batch 368 columns wide: positions count real tokens, so the
    facts are optimized as one at a time."""
    early = EditRequest("{} is " + "very " * 180 + "near", "Paris", "Rome")
    late = EditRequest("word " * 180 + "{} is in", "Paris", "Rome")
    opts = options("tiny-gpt2")
    batch = compute_batch_targets(tiny_model("tiny-gpt2"), LAYER, [early, late], TEMPLATES, opts)
    alone = [
        compute_batch_targets(tiny_model("tiny-gpt2"), LAYER, [r], TEMPLATES, opts)
        for r in (early, late)
    ]
    assert batch.adam_steps == [a.adam_steps[0] for a in alone]
    errors = relative_errors(batch.deltas, torch.cat([a.deltas for a in alone], 1))
    assert max(errors) <= DELTA_TOLERANCE, errors


def test_no_request_is_refused() -> None:
    with pytest.raises(ValueError, match="no requests"):
        compute_batch_targets(tiny_model("tiny-gpt2"), LAYER, [], TEMPLATES, options("tiny-gpt2"))


def test_a_prompt_without_its_slot_names_the_fact() -> None:
    # EditRequest refuses such a prompt when built; one changed afterwards (or any object
    # with these fields) still reaches the batch, which must name it.
    broken = EditRequest(*dataclasses.astuple(REQUESTS[2])[:3])
    object.__setattr__(broken, "prompt", "Miles Davis plays the")
    requests = [*REQUESTS[:2], broken, REQUESTS[3]]
    with pytest.raises(ValueError, match=r"fact 2 \(subject 'Miles Davis'\).*exactly one"):
        compute_batch_targets(
            tiny_model("tiny-gpt2"), LAYER, requests, TEMPLATES, options("tiny-gpt2")
        )


def test_a_subject_no_token_ends_names_the_fact() -> None:
    """The batch tokenizes every fact's prompts at once; its failure is traced to the fact."""
    merged = EditRequest("{}s are found in", "Paris", "Rome")  # "Paris" + "s" is one token
    requests = [*REQUESTS[:3], merged]
    with pytest.raises(ValueError, match=r"fact 3 \(subject 'Paris'\): cannot locate"):
        compute_batch_targets(
            tiny_model("tiny-gpt2"), LAYER, requests, TEMPLATES, options("tiny-gpt2")
        )


def test_prompts_beyond_the_context_name_their_facts() -> None:
    loaded = tiny_model("tiny-gpt2")  # a context of 256 tokens
    long = EditRequest("word " * 300 + "{} is in", "Paris", "Rome")
    requests = [REQUESTS[0], long, REQUESTS[1], long]
    with pytest.raises(ValueError, match=r"fact 1 needs \d+, fact 3 needs \d+ tokens") as err:
        compute_batch_targets(loaded, LAYER, requests, TEMPLATES, options("tiny-gpt2"))
    assert "context of 256 tokens" in str(err.value)
    assert "fact 0" not in str(err.value)
    assert "fact 2" not in str(err.value)


def test_a_stopped_fact_leaves_the_forward_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a fact stops, the passes run the running facts' rows only: the top block sees
    all of the batch's rows in the prefix pass, then at iteration i the rows of the facts
    whose loops run to i. One batch (a group cost no grouping pays)."""
    family = "tiny-llama"
    monkeypatch.setattr(batch_targets, "GROUP_COST_CELLS", BATCHING["one batch"])
    loaded = tiny_model(family)
    never = compute_batch_targets(
        loaded, LAYER, REQUESTS, TEMPLATES, options(family, v_weight_decay=0.0)
    )
    threshold = staggered_threshold(never.loss_traces)
    stops = [first_below(trace, threshold) for trace in never.loss_traces]
    assert len(set(stops)) >= 3, stops
    rows_per_fact = len(TEMPLATES) + 1
    seen: list[int] = []  # the batch size of every pass through the top block

    def count(_m: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(int((args[0] if args else kwargs["hidden_states"]).shape[0]))

    top = loaded.adapter.block(loaded.model, loaded.adapter.n_layers(loaded.model) - 1)
    handle = top.register_forward_pre_hook(count, with_kwargs=True)
    try:
        opts = options(family, v_weight_decay=0.0, v_early_stop_loss=threshold)
        compute_batch_targets(loaded, LAYER, REQUESTS, TEMPLATES, opts)
    finally:
        handle.remove()
    running = [sum(stop >= i for stop in stops) for i in range(max(stops) + 1)]
    assert seen == [len(REQUESTS) * rows_per_fact] + [rows_per_fact * n for n in running]


def test_the_yardstick_computes_the_same_targets() -> None:
    """The benchmarks' yardstick (one δ per fact, full forward passes, ROME's loop with MEMIT's
    norms) finds the batched loop's targets: equal work on both sides of its ratio."""
    family = "tiny-gpt2"
    loaded, opts = tiny_model(family), options(family)
    naive = naive_targets(loaded, LAYER, REQUESTS[:2], TEMPLATES, opts)
    batch = compute_batch_targets(loaded, LAYER, REQUESTS[:2], TEMPLATES, opts)
    assert_same_facts(batch, naive)  # type: ignore[arg-type]  # NaiveTargets: the same fields


class RecordingBar:
    """A stand-in for tqdm that records its total and every update."""

    made: ClassVar[list[RecordingBar]] = []

    def __init__(self, *, total: int, **_: object) -> None:
        self.total, self.n = total, 0
        self.updates: list[int] = []
        RecordingBar.made.append(self)

    def __enter__(self) -> RecordingBar:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.updates.append(n)
        self.n += n


def test_the_progress_bar_ticks_each_iteration_and_ends_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bar ticks once per iteration run (every fact stopping by the third iteration, one
    batch), then the group's skipped iterations complete it."""
    family = "tiny-llama"
    monkeypatch.setattr(batch_targets, "GROUP_COST_CELLS", BATCHING["one batch"])
    monkeypatch.setattr(batch_targets, "tqdm", RecordingBar)
    RecordingBar.made.clear()
    loaded = tiny_model(family)
    never = compute_batch_targets(
        loaded, LAYER, REQUESTS, TEMPLATES, options(family, v_weight_decay=0.0)
    )
    threshold = 1.5 * max(trace[2] for trace in never.loss_traces)
    opts = options(family, v_weight_decay=0.0, v_early_stop_loss=threshold)
    stopped = compute_batch_targets(loaded, LAYER, REQUESTS, TEMPLATES, opts)
    full, early = RecordingBar.made
    assert full.updates == [1] * STEPS + [0]
    assert full.n == full.total == STEPS
    iterations = max(len(trace) for trace in stopped.loss_traces)
    assert iterations <= 3, stopped.loss_traces
    assert early.updates == [1] * iterations + [STEPS - iterations]
    assert early.n == early.total
