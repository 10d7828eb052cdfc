"""Single and sequential runs on a tiny random GPT-2 with a fake editor that follows the
Editor contract (edit / revert / restore, EditResult fields)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from rome_fast.cli.eval import EditorRecipe
from rome_fast.edit.editor import Editor
from rome_fast.edit.naive import NaiveEditor
from rome_fast.edit.ownership import stored_weight
from rome_fast.edit.request import EditResult
from rome_fast.eval.config import RunConfig
from rome_fast.eval.data import EvalCase, load_cases
from rome_fast.eval.files import read_lines
from rome_fast.eval.gates import compare
from rome_fast.eval.report import write_report
from rome_fast.eval.runner import Runner
from rome_fast.hparams.defaults import hparams_for
from rome_fast.infra.datadir import default_data_dir
from rome_fast.model.loader import LoadedModel, random_model
from rome_fast.solve.low_rank import Factors, SiteUpdate, Update
from tests.models import key_dim, pretrained

LAYER = 1


@dataclass(frozen=True)
class FakeHparams:
    layer: int = LAYER


class FakeEditor:
    """Pushes the MLP output of one layer towards the target's embedding (rank one), so edits
    have a real effect on scores; ``huge`` case ids get a 1000× update (a disabling edit)."""

    def __init__(
        self, loaded: LoadedModel, huge: frozenset[Any] = frozenset(), leaky: bool = False
    ) -> None:
        self.loaded, self.huge, self.leaky = loaded, huge, leaky
        self.hparams = FakeHparams()
        self.name = loaded.adapter.edited_module_name(LAYER)
        self.saved: torch.Tensor | None = None
        self.prepared: list[Any] = []  # case ids, in the order prepare() saw them

    @property
    def weight(self) -> torch.Tensor:
        weight = self.loaded.model.get_submodule(self.name).weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def prepare(self, request: Any) -> Any:
        self.prepared.append(request.case_id)
        return request

    def apply(self, prepared: Any, variant: str = "r-rome") -> EditResult:
        return self.edit(prepared, variant)

    def edit(self, request: Any, variant: str = "r-rome") -> EditResult:
        if self.saved is None:
            self.saved = self.weight.detach().clone()
        token = self.loaded.tokenizer(" " + request.target_new)["input_ids"][0]
        embeddings = stored_weight(pretrained(self.loaded).get_input_embeddings())  # (V, d_out)
        left = embeddings[token].detach().clone()  # (d_out,)
        scale = 200.0 * (1000.0 if request.case_id in self.huge else 1.0)
        right = torch.full((self.weight.shape[0],), scale / self.weight.shape[0])  # (d_in,)
        with torch.no_grad():  # Conv1D stores (d_in, d_out)
            self.weight.add_(torch.outer(right, left))
        norm = float(left.norm() * right.norm()) / self.weight.numel()
        return EditResult(
            request=request,
            variant=variant,
            update=Update((SiteUpdate(LAYER, self.name, Factors(left[:, None], right[:, None])),)),
            denominator=1.0,
            delta_norm=norm,
            relative_residual_k_star=0.0,
            relative_residual_k_prompt=0.0,
            key_cosine=1.0,
            loss_trace=[],
            timings={},
            templates=[],
            seed=0,
            edit_seconds=0.0,
            k_star=right,
            k_prompt=right,
            v_star=left,
        )

    def revert(self, result: EditResult) -> None:
        with torch.no_grad():
            factors = result.update.at(self.name)
            self.weight.sub_(factors.delta().T)  # Conv1D stores (d_in, d_out)

    def restore(self) -> None:
        if self.saved is not None:
            with torch.no_grad():
                self.weight.copy_(self.saved)
                if self.leaky:  # a bug: restore misses by one ulp somewhere
                    self.weight[0, 0] = torch.nextafter(self.weight[0, 0], torch.tensor(1e9))
        self.saved = None


def make_cases(n: int) -> list[EvalCase]:
    subjects = [
        "Danielle Darrieux",
        "Paris",
        "Toyota",
        "Miles Davis",
        "the Nile",
        "Apple",
        "Mozart",
        "Berlin",
    ]
    return [
        EvalCase(
            case_id=100 + i,
            prompt="The home of {} is",
            subject=subjects[i % len(subjects)],
            target_new="London",
            target_true="Rome",
            paraphrase_prompts=(f"Everyone knows that {subjects[i % len(subjects)]} is in",),
            neighborhood_prompts=("The home of Zeus is", "Tokyo is in"),
            neighborhood_target="Rome",
        )
        for i in range(n)
    ]


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    # Tiny models only lose from intra-op threads, badly so on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def loaded() -> LoadedModel:
    return random_model("tiny-gpt2")


def config(**overrides: Any) -> RunConfig:
    base: dict[str, Any] = {
        "model": "random:tiny-gpt2",
        "data": "<memory>",
        "variants": ("a",),
        "n_generations": 2,
        "generation_tokens": 4,
        "collapse_min_history": 2,
    }
    return RunConfig(**{**base, **overrides})


def test_single_run_writes_one_line_per_case_and_restores(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    before = stored_weight(loaded.model.get_submodule("transformer.h.1.mlp.c_proj")).clone()
    summary = Runner(loaded, FakeEditor(loaded), make_cases(3), config(), tmp_path).run()
    rows = read_lines(tmp_path / "single-a.jsonl")
    assert [r["case_id"] for r in rows] == [100, 101, 102]
    assert torch.equal(
        stored_weight(loaded.model.get_submodule("transformer.h.1.mlp.c_proj")), before
    )
    assert summary["results"]["single"]["a"]["n"] == 3
    assert summary["results"]["single"]["a"]["ES"] > summary["results"]["single"]["a"]["pre"]["ES"]
    assert json.loads((tmp_path / "config.json").read_text())["run"]["seed"] == 0


def test_single_run_prepares_each_case_once_for_all_variants(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    editor = FakeEditor(loaded)
    Runner(loaded, editor, make_cases(3), config(variants=("a", "b")), tmp_path).run()
    assert editor.prepared == [100, 101, 102]
    assert len(read_lines(tmp_path / "single-b.jsonl")) == 3


def test_sequential_run_prepares_every_edit_on_the_edited_model(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    editor = FakeEditor(loaded)
    cfg = config(variants=("a", "b"), modes=("sequential",))
    Runner(loaded, editor, make_cases(2), cfg, tmp_path).run()
    assert editor.prepared == []  # edit() on the live model, never a shared preparation


def test_single_run_detects_inexact_restore(loaded: LoadedModel, tmp_path: Path) -> None:
    runner = Runner(loaded, FakeEditor(loaded, leaky=True), make_cases(2), config(), tmp_path)
    with pytest.raises(RuntimeError, match="not restored bit-exactly"):
        runner.run()


def test_sequential_run_accumulates_and_flags_a_disabling_edit(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    editor = FakeEditor(loaded, huge=frozenset({104}))
    summary = Runner(loaded, editor, make_cases(6), config(modes=("sequential",)), tmp_path).run()
    rows = read_lines(tmp_path / "sequential-a.jsonl")
    norms = [r["cumulative_norm"] for r in rows]
    assert norms[1] > norms[0] > 0
    assert [r["collapse"] for r in rows[:4]] == [False] * 4
    assert "running median" in rows[4]["collapse_reasons"][0]
    seq = summary["results"]["sequential"]["a"]
    assert seq["first_collapse"] == 5
    assert seq["collapses"] == sum(r["collapse"] for r in rows)
    assert len(read_lines(tmp_path / "sequential-a-final.jsonl")) == 6


def _kill_at(mode: str, index: int) -> Any:
    def hook(run_mode: str, _variant: str, at: int) -> None:
        if (run_mode, at) == (mode, index):
            raise KeyboardInterrupt  # a kill between cases

    return hook


@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_killed_run_resumes_without_loss_or_duplication(
    loaded: LoadedModel, tmp_path: Path, mode: str
) -> None:
    cases, cfg = make_cases(5), config(modes=(mode,), variants=("a", "b"))
    reference = Runner(loaded, FakeEditor(loaded), cases, cfg, tmp_path / "whole").run()
    killed = Runner(
        loaded, FakeEditor(loaded), cases, cfg, tmp_path / "resumed", on_case=_kill_at(mode, 3)
    )
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    FakeEditor(loaded).restore()  # what a new process would see: the unedited model
    loaded_fresh = random_model("tiny-gpt2")
    resumed = Runner(
        loaded_fresh,
        FakeEditor(loaded_fresh),
        cases,
        cfg,
        tmp_path / "resumed",
        fresh_editor=lambda: FakeEditor(loaded_fresh),
    ).run()
    for variant in ("a", "b"):
        ids = [r["case_id"] for r in read_lines(tmp_path / "resumed" / f"{mode}-{variant}.jsonl")]
        assert ids == [c.case_id for c in cases]
    whole, again = reference["results"][mode], resumed["results"][mode]
    for variant in ("a", "b"):
        for metric in ("ES", "EM", "PS", "NS", "NM", "S"):
            assert again[variant][metric] == pytest.approx(whole[variant][metric], abs=1e-9)


def test_half_written_line_is_redone(loaded: LoadedModel, tmp_path: Path) -> None:
    cases, cfg = make_cases(3), config()
    Runner(loaded, FakeEditor(loaded), cases, cfg, tmp_path).run()
    path = tmp_path / "single-a.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    Runner(loaded, FakeEditor(loaded), cases, cfg, tmp_path).run()
    assert [r["case_id"] for r in read_lines(path)] == [100, 101, 102]


def test_resume_refuses_a_different_configuration(loaded: LoadedModel, tmp_path: Path) -> None:
    Runner(loaded, FakeEditor(loaded), make_cases(2), config(), tmp_path).run()
    with pytest.raises(ValueError, match="different run"):
        Runner(loaded, FakeEditor(loaded), make_cases(2), config(seed=1), tmp_path).run()


def test_degraded_editor_fails_the_gate_that_the_real_one_passes(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    cases = make_cases(4)
    good = Runner(loaded, FakeEditor(loaded), cases, config(), tmp_path / "good").run()
    bad = Runner(loaded, FakeEditor(loaded), cases, config(degrade="zero"), tmp_path / "bad").run()
    metrics = {m: good["results"]["single"]["a"][m] for m in ("ES", "PS")}
    baseline = {
        "name": "fake",
        "model": "random:tiny-gpt2",
        "mode": "single",
        "n_cases": 4,
        "tolerance": {"default": 1.0},
        "variants": {"a": metrics},
    }
    assert compare(good, baseline).passed
    failed = compare(bad, baseline)
    assert "ES" in {c.metric for c in failed.failures}
    assert "a/ES" in failed.report()


def test_report_writes_table_and_plots(loaded: LoadedModel, tmp_path: Path) -> None:
    cfg = config(modes=("single", "sequential"), glue_every=2, glue_n=2, glue_shots=1)
    summary = Runner(loaded, FakeEditor(loaded), make_cases(3), cfg, tmp_path).run()
    paths = write_report(tmp_path, summary)
    assert {p.name for p in paths} == {
        "table.txt",
        "delta-entropy-single.png",
        "delta-entropy-sequential.png",
        "sequential-a.png",
    }
    assert all(p.stat().st_size > 0 for p in paths)
    assert [g["step"] for g in read_lines(tmp_path / "glue-a.jsonl")] == [0, 2, 3]


@pytest.mark.slow
def test_runs_with_the_real_editor_on_a_tiny_model(tmp_path: Path) -> None:
    path = default_data_dir() / "counterfact" / "counterfact-rome-schema-sample.json"
    lm = random_model("tiny-gpt2")
    hp = hparams_for("random:tiny-gpt2").replace(
        context_template_schedule=((5, 2),), v_num_grad_steps=5
    )
    d_in = key_dim(lm, hp.layer)

    def make() -> Editor:
        return Editor(lm, hparams=hp, stats=torch.eye(d_in))

    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cfg = config(variants=("r-rome",), modes=("single", "sequential"))
    cases = load_cases(path, limit=2)
    Runner(lm, make(), cases, cfg, tmp_path, fresh_editor=make).run()
    for mode in ("single", "sequential"):
        rows = read_lines(tmp_path / f"{mode}-r-rome.jsonl")
        assert [r["case_id"] for r in rows] == [c.case_id for c in cases]
        for row in rows:  # the edit lowers the new target's NLL on its own prompt
            assert row["post"]["rewrite"]["nll_new"][0] < row["pre"]["rewrite"]["nll_new"][0]
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())


@pytest.mark.parametrize("impl", ["fast", "naive"])
def test_a_recipes_editors_keep_the_class_settings_templates_and_c(impl: str) -> None:
    lm = random_model("tiny-gpt2")
    cls = NaiveEditor if impl == "naive" else Editor
    d_in = key_dim(lm, 1)
    hp = hparams_for("random:tiny-gpt2").replace(context_template_schedule=((5, 2),))
    editor = cls(lm, hparams=hp, seed=3, stats=torch.eye(d_in))
    fresh = EditorRecipe.of(editor)(lm)
    assert type(fresh) is cls
    assert (fresh.hparams, fresh.seed, fresh.templates) == (hp, 3, editor.templates)
    assert fresh.covariance(1) is editor.covariance(1)
