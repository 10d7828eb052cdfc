"""Every input error is a ValueError that names the problem and the fix."""

from __future__ import annotations

import math

import pytest
import torch

from rome_fast.methods.rome.update import CovarianceFactor, RankOne, UpdateInputs, rank_one_update


def inputs(d_out: int = 3, d_in: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(d_in, 2 * d_in, generator=g, dtype=torch.float64)
    return {
        "W0": torch.randn(d_out, d_in, generator=g, dtype=torch.float64),
        "C": A @ A.T / (2 * d_in) + 0.1 * torch.eye(d_in, dtype=torch.float64),
        "k_star": torch.randn(d_in, generator=g, dtype=torch.float64),
        "k_prompt": torch.randn(d_in, generator=g, dtype=torch.float64),
        "v_star": torch.randn(d_out, generator=g, dtype=torch.float64),
    }


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("k_star", (3,), r"k_star must have shape \(4,\) for W0 of shape \(3, 4\).*got \(3,\)"),
        ("k_prompt", (4, 1), r"k_prompt must have shape \(4,\).*got \(4, 1\)"),
        ("v_star", (4,), r"v_star must have shape \(3,\).*got \(4,\)"),
        ("C", (3, 3), r"C must have shape \(4, 4\).*got \(3, 3\)"),
    ],
)
def test_shape_mismatch_names_both_shapes(name: str, shape: tuple[int, ...], match: str) -> None:
    args = inputs()
    args[name] = torch.ones(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        rank_one_update(**args)  # type: ignore[arg-type]


def test_bias_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\).*got \(4,\)"):
        rank_one_update(**inputs(), bias=torch.zeros(4, dtype=torch.float64))  # type: ignore[arg-type]


def test_transposed_weight_points_to_weight_matrix() -> None:
    args = inputs()
    args["W0"] = args["W0"].T.contiguous()
    with pytest.raises(ValueError, match=r"k_star must have shape \(3,\) for W0 of shape \(4, 3\)"):
        rank_one_update(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["W0", "C", "k_star", "k_prompt", "v_star", "bias"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_is_named(name: str, bad: float) -> None:
    args = inputs()
    args["bias"] = torch.zeros(3, dtype=torch.float64)
    args[name] = args[name].clone()
    args[name].view(-1)[0] = bad
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or infinite values"):
        rank_one_update(**args)  # type: ignore[arg-type]


def test_indefinite_covariance_suggests_regularization() -> None:
    args = inputs()
    args["C"] = torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"not symmetric positive definite.*C \+ λI"):
        rank_one_update(**args)  # type: ignore[arg-type]


def test_singular_covariance_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"not symmetric positive definite"):
        CovarianceFactor.from_matrix(torch.zeros(4, 4, dtype=torch.float64))


def test_asymmetric_covariance_is_rejected() -> None:
    C = inputs()["C"]
    C[0, 1] += 1.0
    with pytest.raises(ValueError, match=r"C is not symmetric \(max \|C − Cᵀ\| = 1\)"):
        CovarianceFactor.from_matrix(C)


def test_unknown_variant_lists_available() -> None:
    with pytest.raises(
        ValueError, match=r"unknown variant 'memit'; available: rome, r-rome, p-rome"
    ):
        rank_one_update(**inputs(), variant="memit")


def test_orthogonal_keys_under_c_inverse_are_a_disabling_edit() -> None:
    args = inputs()
    C = args["C"]
    u_star = torch.linalg.solve(C, args["k_star"])
    # k_prompt ⟂ C⁻¹k*: the original's denominator k*ᵀC⁻¹k_s is exactly zero
    k_prompt = args["k_prompt"] - (u_star @ args["k_prompt"]) / (u_star @ u_star) * u_star
    args["k_prompt"] = k_prompt
    with pytest.raises(ValueError, match=r"denominator .* is zero or not finite.*disabling edit"):
        rank_one_update(**args, variant="rome")
    rank_one_update(**args, variant="r-rome")  # the rebuilt update is unaffected


def test_variant_returning_non_finite_factors_is_rejected() -> None:
    def broken(inp: UpdateInputs) -> RankOne:
        nan = torch.full_like(inp.k_star, math.nan)
        return RankOne(inp.v_star, nan, torch.tensor(1.0, dtype=inp.W0.dtype))

    with pytest.raises(ValueError, match=r"returned a non-finite right"):
        rank_one_update(**inputs(), variant=broken)


def test_variant_returning_wrong_shapes_is_rejected() -> None:
    def transposed(inp: UpdateInputs) -> RankOne:
        return RankOne(inp.k_star, inp.v_star, torch.tensor(1.0, dtype=inp.W0.dtype))

    with pytest.raises(ValueError, match=r"expected left \(3,\) and right \(4,\)"):
        rank_one_update(**inputs(), variant=transposed)
