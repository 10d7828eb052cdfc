"""A user's variant from the command line: ``module:function`` or ``file.py:function``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rome_fast.cli.user_variants import load_variant, registered_variant_name
from rome_fast.edit.editor import Editor
from rome_fast.edit.request import EditRequest
from rome_fast.methods.rome.variants import available_variants
from tests.models import REQUEST, TEMPLATES, fresh_model, key_dim, random_spd, tiny_hparams

ROOT = Path(__file__).resolve().parents[1]
USER_VARIANT = ROOT / "fixtures" / "inputs" / "user_variant.py"
SPEC = f"{USER_VARIANT}:closed_form_r_rome"
NAME = "user_variant:closed_form_r_rome"  # registered as <file stem>:<function>


pytestmark = pytest.mark.usefixtures("clean_registry")


def write_module(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "mine.py"
    path.write_text("from rome_fast.methods.rome.variants import get_variant\n" + body)
    return path


def test_a_file_spec_edits_like_the_builtin_it_reimplements() -> None:
    registered = load_variant(SPEC)
    assert (registered.name, registered.inserts_at) == (NAME, "k_star")
    hp = tiny_hparams("tiny-gpt2")
    C = random_spd(key_dim(fresh_model("tiny-gpt2"), hp.layer))
    results = []
    for variant in (NAME, "r-rome"):
        editor = Editor(fresh_model("tiny-gpt2"), hparams=hp, stats=C, templates=TEMPLATES)
        results.append(editor.edit(EditRequest(*REQUEST), variant=variant))
    mine, builtin = results
    assert mine.variant == NAME
    name = builtin.module_name
    torch.testing.assert_close(mine.update.at(name).delta(), builtin.update.at(name).delta())
    assert mine.relative_residual_k_star < 1e-4


def test_a_module_spec_and_the_suffix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "def prompt_side(inp):\n    return get_variant('p-rome')(inp)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registered = load_variant("mine:prompt_side@k_prompt")
        assert (registered.name, registered.inserts_at) == ("mine:prompt_side", "k_prompt")
        assert registered_variant_name("mine:prompt_side@k_prompt") == "mine:prompt_side"
    finally:
        sys.modules.pop("mine", None)


@pytest.mark.parametrize(
    ("body", "spec_tail", "message"),
    [
        ("", ":absent@k_star", "has no attribute 'absent'"),
        ("value = 3\n", ":value@k_star", "'value' is a int, not a function"),
        ("def f(inp):\n    return get_variant('r-rome')(inp)\n", ":f", "append @k_star"),
        ("def f(inp):\n    return get_variant('r-rome')(inp)\n", ":f@k_mid", "@k_star or"),
        ("def f(inp):\n    return 1.0\n", ":f@k_star", "returned float, not a RankOne"),
        ("def f():\n    return None\n", ":f@k_star", "failed on a small well-posed input"),
        (
            "def f(inp):\n    r = get_variant('r-rome')(inp)\n"
            "    return type(r)(r.right, r.left, r.denominator)\n",
            ":f@k_star",
            "must be \\(d_out,\\) and \\(d_in,\\)",
        ),
    ],
)
def test_bad_user_variants_are_refused_by_name(
    tmp_path: Path, body: str, spec_tail: str, message: str
) -> None:
    path = write_module(tmp_path, body)
    with pytest.raises(ValueError, match=message):
        load_variant(f"{path}{spec_tail}")
    assert not any(name.startswith("mine:") for name in available_variants())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_here:f@k_star", "cannot import module 'no_such_module_here'"),
        ("missing/file.py:f@k_star", "file 'missing/file.py' does not exist"),
        (":f", "expected module:function"),
        ("not-registered", "unknown variant"),
    ],
)
def test_unloadable_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registered_variant_name(spec)


def test_the_suffix_wins_over_the_functions_attribute() -> None:
    assert load_variant(f"{SPEC}@k_prompt").inserts_at == "k_prompt"


def test_the_same_name_from_another_file_is_refused(tmp_path: Path) -> None:
    load_variant(SPEC)
    other = tmp_path / "user_variant.py"
    other.write_text(USER_VARIANT.read_text())
    with pytest.raises(ValueError, match="already registered from"):
        load_variant(f"{other}:closed_form_r_rome")
    assert load_variant(SPEC).name == NAME  # the same file again: the registered one
    with pytest.raises(ValueError, match="already registered with @k_star"):
        load_variant(f"{SPEC}@k_prompt")
