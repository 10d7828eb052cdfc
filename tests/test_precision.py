"""The v* loop's precision: strict float32 by default, TF32/bf16 only when asked for."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

from rome_fast.cli.main import main
from rome_fast.edit.editor import Editor
from rome_fast.edit.naive import NaiveEditor
from rome_fast.edit.value import compute_v_star
from rome_fast.model import precision
from rome_fast.model.precision import loop_precision
from tests.models import EDIT, FAMILIES, TEMPLATES, at, tiny_hparams, tiny_model

LAYER = 1
CUDA = torch.device("cuda")  # only the TF32 switches are touched: no GPU needed


@pytest.fixture
def tf32_switches() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tf32_state() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.usefixtures("tf32_switches")
@pytest.mark.parametrize(("precision", "inside"), [("fp32", False), ("tf32", True)])
@pytest.mark.parametrize("outside", [False, True])
def test_loop_sets_tf32_and_puts_it_back(precision: str, inside: bool, outside: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = outside
    with loop_precision(precision, CUDA):
        assert tf32_state() == (inside, inside)
    assert tf32_state() == (outside, outside)


@pytest.mark.usefixtures("tf32_switches")
def test_loop_puts_tf32_back_on_error() -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with pytest.raises(RuntimeError, match="boom"), loop_precision("tf32", CUDA):
        raise RuntimeError("boom")
    assert tf32_state() == (False, False)


def test_bf16_forward_context_is_autocast() -> None:
    with loop_precision("bf16", torch.device("cpu")) as forward, forward():
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == torch.bfloat16


@pytest.mark.parametrize("emulated", [True, False])
def test_bf16_on_a_cpu_without_bfloat16_kernels_warns(
    emulated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Emulated bf16 is slower than fp32: the user who asked for speed is told when the loop
    runs; on a CPU with bfloat16 kernels (or for fp32) nothing is said."""
    monkeypatch.setattr(precision, "cpu_bf16_is_emulated", lambda: emulated)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for asked in ("bf16", "fp32"):
            with loop_precision(asked, torch.device("cpu")):
                pass
    said = [w for w in caught if issubclass(w.category, precision.EmulatedBf16Warning)]
    assert len(said) == (1 if emulated else 0), [str(w.message) for w in caught]
    if emulated:
        assert "use fp32 here" in str(said[0].message)


def test_the_command_line_shows_a_warning_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_is_emulated", lambda: True)
    argv = ["edit", "--model", "random:tiny-gpt2", "--prompt", "{} lives in", "--subject", "Ann"]
    argv += ["--target-new", "Paris", "--precision", "bf16", "--generation-tokens", "0"]
    argv += ["--stats-samples", "8"]
    with warnings.catch_warnings():
        warnings.simplefilter("always", precision.EmulatedBf16Warning)
        assert main(argv) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "bfloat16" in line]
    assert len(said) == 1, err
    assert said[0].startswith("rome edit: warning: this CPU"), err
    assert "precision.py" not in err, err  # neither the file nor the source line


def test_tf32_on_cpu_is_refused_before_anything_runs() -> None:
    hp = tiny_hparams("tiny-gpt2", v_precision="tf32")
    with pytest.raises(ValueError, match=r"needs a CUDA device.*use 'fp32' or 'bf16'"):
        Editor(tiny_model("tiny-gpt2"), hparams=hp, stats=torch.eye(1))


def test_naive_baseline_refuses_bf16() -> None:
    hp = tiny_hparams("tiny-gpt2", v_precision="bf16")
    with pytest.raises(ValueError, match="naive baseline runs float32 only"):
        NaiveEditor(tiny_model("tiny-gpt2"), hparams=hp, stats=torch.eye(1))


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_loss_is_near_the_float32_one_but_not_it(family: str) -> None:
    """bf16 really changes the loop's arithmetic (not silently ignored) and computes the same
    loss up to bfloat16 rounding. (Where δ ends up after 19 Adam steps is measured on a real
    model in BENCHMARKS.md: on random tiny models Adam's sign-like steps amplify rounding.)"""
    loaded = tiny_model(family)
    fp32, bf16 = (
        compute_v_star(
            *at(loaded, LAYER),
            EDIT,
            TEMPLATES,
            tiny_hparams(family, v_num_grad_steps=1, v_precision=precision).v_star,
        )
        for precision in ("fp32", "bf16")
    )
    assert bf16.v_star.dtype == torch.float32
    torch.testing.assert_close(bf16.v_init, fp32.v_init, rtol=0, atol=0)  # read in float32
    (loss_fp32,), (loss_bf16,) = fp32.loss_trace, bf16.loss_trace
    assert loss_bf16 != loss_fp32
    assert loss_bf16 == pytest.approx(loss_fp32, rel=2e-2)
