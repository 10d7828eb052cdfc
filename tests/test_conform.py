"""The conformance harness on our editor, on the public ROME code and on planted bugs."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest

from rome_fast.conform.ours import OurEditor
from rome_fast.conform.properties import PROPERTY_NAMES
from rome_fast.conform.protocol import CallableEditor
from rome_fast.conform.public import LAYOUTS, PublicEditor
from tests import conform_editors
from tests.anchors import checkout
from tests.conform_setup import conform, failed

VARIANTS = ("rome", "r-rome", "p-rome")


@pytest.mark.parametrize("variant", VARIANTS)
def test_our_variants_are_recognised_and_pass(variant: str) -> None:
    report = conform(OurEditor(variant), cases=2, expect=variant)
    assert report.verdict == variant, str(report)
    assert report.ok, str(report)
    assert set(report.properties()) == set(PROPERTY_NAMES)


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-gptj"])
@pytest.mark.parametrize("config", VARIANTS)
@pytest.mark.anchors
def test_paper_code_flags_give_each_variant(family: str, config: str) -> None:
    editor = PublicEditor(LAYOUTS["rebuilding-rome"], checkout("rebuilding-rome"), config)
    report = conform(editor, family, expect=config)
    assert report.verdict == config, str(report)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    ("spec", "verdict"), [("easyedit-rome", "rome"), ("easyedit-r-rome", "r-rome")]
)
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-gptj"])
@pytest.mark.anchors
def test_easyedit_editors(spec: str, verdict: str, family: str) -> None:
    report = conform(PublicEditor(LAYOUTS[spec], checkout("easyedit")), family, expect=verdict)
    assert report.verdict == verdict, str(report)
    assert report.ok, str(report)


@pytest.mark.anchors
def test_original_config_misses_k_star() -> None:
    editor = PublicEditor(LAYOUTS["rebuilding-rome"], checkout("rebuilding-rome"), "rome")
    report = conform(editor, expect="rome")
    (case,) = report.cases
    residual = case.identification.insertion_residual
    assert residual["k_prompt"] < 1e-4 < 1e-2 < residual["k_star"], str(report)
    assert "asymmetric" in report.description


@pytest.mark.anchors
def test_public_editor_leaves_the_process_as_it_was() -> None:
    editor = PublicEditor(LAYOUTS["rebuilding-rome"], checkout("rebuilding-rome"), "r-rome")
    conform(editor)
    main = sys.modules["rome.rome_main"]
    assert main.CONTEXT_TEMPLATES_CACHE is None  # the injected templates were taken back
    if importlib.util.find_spec("datasets") is None:
        assert "datasets" not in sys.modules  # the import-only stand-in was removed


# --- planted bugs: each fails the property that targets it ----------------------------------


def test_planted_dropped_c_inverse_fails_direction() -> None:
    report = conform(conform_editors.dropped_c_inverse, expect="r-rome")
    assert {"direction_key", "c_norm_minimal"} <= failed(report), str(report)
    assert report.verdict == "other"
    assert not report.ok


def test_planted_wrong_key_fails_key_properties() -> None:
    report = conform(CallableEditor(conform_editors.wrong_key, "wrong_key"), expect="r-rome")
    assert {"direction_key", "insertion_key"} <= failed(report), str(report)


def test_planted_second_weight_fails_only_edited_weight() -> None:
    report = conform(CallableEditor(conform_editors.two_weights, "two_weights"), expect="r-rome")
    assert failed(report) == {"only_edited_weight"}, str(report)


def test_planted_revert_by_rounding_fails_revert_exact() -> None:
    report = conform(conform_editors.revert_by_rounding, expect="r-rome", steps=3)
    assert failed(report) == {"revert_exact"}, str(report)
    assert report.properties()["revert_exact"]["value"] > 0


@pytest.mark.anchors
def test_easyedit_shipped_setting_without_c_is_not_rome(monkeypatch: pytest.MonkeyPatch) -> None:
    """EasyEdit's shipped yaml files set mom2_adjustment: false: the direction is k*, not C⁻¹k*."""
    editor = PublicEditor(LAYOUTS["easyedit-r-rome"], checkout("easyedit"))
    adapted = editor.hparams
    monkeypatch.setattr(
        editor,
        "hparams",
        lambda inputs: dataclasses.replace(adapted(inputs), mom2_adjustment=False),
    )
    report = conform(editor, expect="r-rome")
    assert "direction_key" in failed(report), str(report)
    assert report.verdict == "other"


def test_expect_other_accepts_a_research_variant_that_keeps_the_invariants() -> None:
    report = conform(conform_editors.dropped_c_inverse, expect="other")
    assert report.verdict == "other"
    assert report.ok, str(report)  # one weight, rank one, exact revert, deterministic
    assert report.properties()["direction_key"]["passed"] is None
