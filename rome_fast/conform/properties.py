"""Black-box properties of one edit, measured from the weights before and after it and from
our reference (float64) on the same inputs: the keys k*, k_prompt, our v* and C.

Each property gives ``passed`` (``None`` when the expected variant does not require it), the
measured number and a one-line explanation. Key identification works on the update alone:

* direction: ΔW = left·rightᵀ with ``right ∝ C⁻¹k`` for the direction key k, so ``C·right``
  points along k; the misfit is the sine of the angle between ``C·right`` and each key;
* insertion: ``‖Ŵk + b − v*‖ / ‖v*‖`` at each key against our v*.

A key is identified when its misfit is below the tolerance and the other key's is
``SEPARATION`` times larger (otherwise the keys are too close to tell apart on this case).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from rome_ref.diagnostics import update_diagnostics
from rome_ref.update import rank_one_update, solve_c, variant_keys

F64 = NDArray[np.float64]
KEYS = ("k_star", "k_prompt")
VARIANTS = ("rome", "r-rome", "p-rome")
SEPARATION = 10.0
# Tolerances: float32 weights and a float32 C⁻¹ (cond(C) ~ 1e3 on the tiny models) leave misfits
# near 1e-6..1e-4 (docs/results/conformance.md); keys of different prompts differ by > 1e-2.
RANK_TOL = 1e-3  # σ₂/σ₁ of ΔW
DIRECTION_TOL = 1e-2  # sine of the angle between C·right and the key
INSERTION_TOL = 1e-2  # ‖Ŵk + b − v*‖/‖v*‖ (v* itself agrees to ~1e-4 between codes)
MINIMALITY_TOL = 1e-2  # ‖ΔW − ΔW_min‖_F / ‖ΔW_min‖_F for the insertion key
REFERENCE_TOL = 1e-2  # ‖ΔW − ΔW_ref‖_F / ‖ΔW_ref‖_F


PROPERTY_NAMES = (
    "only_edited_weight",
    "rank_one",
    "direction_key",
    "insertion_key",
    "c_norm_minimal",
    "matches_reference",
    "denominator",
    "revert_exact",
    "deterministic",
)


def keys_of(variant: str) -> tuple[str, str]:
    """``(insertion key, direction key)`` names of a variant, from the reference's table."""
    insert, direction = variant_keys(variant, cast(Any, "k_star"), cast(Any, "k_prompt"))
    return cast(str, insert), cast(str, direction)


DESCRIPTIONS = {
    "rome": "inserts at k_prompt, direction C⁻¹k*: the original asymmetric update",
    "r-rome": "inserts at k*, direction C⁻¹k*: r-ROME's symmetric update",
    "p-rome": "inserts at k_prompt, direction C⁻¹k_prompt: p-ROME",
}


@dataclass(frozen=True)
class Observation:
    """One edit as the harness saw it (float64, the edited weight as (d_out, d_in))."""

    W0: F64
    delta: F64  # W1 − W0 of the edited weight
    bias: F64 | None
    C: F64
    k_star: F64
    k_prompt: F64
    v_star: F64  # our v*, desired module output
    changed_others: tuple[str, ...]  # other parameters that are not bit-identical
    revert_diff: float | None  # max |W − W_before| after revert; None: no revert offered
    repeat_diff: float | None  # max |ΔW₁ − ΔW₂| of the same edit twice; None: not run

    def key(self, name: str) -> F64:
        return self.k_star if name == "k_star" else self.k_prompt


@dataclass(frozen=True)
class Measured:
    name: str
    passed: bool | None
    value: float
    detail: str


@dataclass(frozen=True)
class Identification:
    direction: str | None  # "k_star", "k_prompt" or None (neither / indistinguishable)
    insertion: str | None
    direction_misfit: dict[str, float]
    insertion_residual: dict[str, float]

    @property
    def variant(self) -> str:
        for name in VARIANTS:
            if keys_of(name) == (self.insertion, self.direction):
                return name
        return "other"

    def describe(self) -> str:
        if self.variant != "other":
            return DESCRIPTIONS[self.variant]
        ins = self.insertion or "neither key"
        direction = f"C⁻¹{self.direction}" if self.direction else "neither C⁻¹k* nor C⁻¹k_prompt"
        return f"inserts at {ins}, direction {direction}: not a ROME variant"


def _pick(misfit: dict[str, float], tol: float) -> str | None:
    best = min(misfit, key=misfit.__getitem__)
    other = misfit[next(k for k in KEYS if k != best)]
    if misfit[best] < tol and other > SEPARATION * misfit[best]:
        return best
    return None


def _unit(x: F64) -> F64:
    return x / np.linalg.norm(x)


def identify(obs: Observation) -> Identification:
    _, _s, vt = np.linalg.svd(obs.delta, full_matrices=False)
    c_right = obs.C @ vt[0]
    direction = {
        k: float(np.sqrt(max(0.0, 1.0 - float(_unit(c_right) @ _unit(obs.key(k))) ** 2)))
        for k in KEYS
    }
    b = np.zeros_like(obs.v_star) if obs.bias is None else obs.bias
    W1 = obs.W0 + obs.delta
    scale = float(np.linalg.norm(obs.v_star)) or 1.0
    insertion = {k: float(np.linalg.norm(W1 @ obs.key(k) + b - obs.v_star)) / scale for k in KEYS}
    return Identification(
        _pick(direction, DIRECTION_TOL), _pick(insertion, INSERTION_TOL), direction, insertion
    )


def measure(obs: Observation, expect: str | None) -> tuple[Identification, list[Measured]]:
    """Every property of one edit; ``expect`` (a variant name) sets what must hold."""
    ident = identify(obs)
    target = expect if expect is not None else ident.variant
    want = keys_of(target) if target in VARIANTS else (None, None)
    return ident, [
        _only_edited_weight(obs),
        _rank_one(obs),
        _direction_key(ident, want[1]),
        _insertion_key(obs, ident, want[0]),
        _minimality(obs, ident, target),
        _reference(obs, target),
        _denominator(obs, target),
        _exact(
            "revert_exact",
            obs.revert_diff,
            "the editor offers no revert",
            "max |W − W_before| after revert",
        ),
        _exact(
            "deterministic",
            obs.repeat_diff,
            "not repeated on this case",
            "max |ΔW₁ − ΔW₂| of the same edit, same seed",
        ),
    ]


def _only_edited_weight(obs: Observation) -> Measured:
    changed = not np.array_equal(obs.delta, np.zeros_like(obs.delta))
    others = len(obs.changed_others)
    detail = (
        f"other parameters changed: {', '.join(obs.changed_others)}"
        if others
        else "every other parameter bit-identical"
    )
    if not changed:
        detail = "the edited weight did not change; " + detail
    return Measured("only_edited_weight", changed and others == 0, float(others), detail)


def _rank_one(obs: Observation) -> Measured:
    s = np.linalg.svd(obs.delta, compute_uv=False)
    ratio = float(s[1] / s[0]) if s[0] > 0 else float("inf")
    return Measured("rank_one", ratio < RANK_TOL, ratio, f"σ₂/σ₁ of ΔW = {ratio:.3g}")


def _direction_key(ident: Identification, want: str | None) -> Measured:
    m = ident.direction_misfit
    detail = (
        f"C·right vs k*: sin {m['k_star']:.3g}, vs k_prompt: sin {m['k_prompt']:.3g}; "
        f"direction C⁻¹{ident.direction or '?'}"
    )
    return _identified("direction_key", ident.direction, want, m, detail)


def _identified(
    name: str, found: str | None, want: str | None, misfit: dict[str, float], detail: str
) -> Measured:
    """Passes when a key was identified and it is the expected one (no expected key: not
    required, as for an editor expected to be ``other``); value: its misfit."""
    value = misfit[found] if found else min(misfit.values())
    if want is None:
        return Measured(name, None, value, detail)
    return Measured(name, found == want, value, detail + f" (expected {want})")


def _insertion_key(obs: Observation, ident: Identification, want: str | None) -> Measured:
    r = ident.insertion_residual
    detail = f"‖Ŵk+b−v*‖/‖v*‖ at k*: {r['k_star']:.3g}, at k_prompt: {r['k_prompt']:.3g}"
    if ident.insertion is not None:
        # how far the other key is from the editor's own value at its insertion key
        b = np.zeros_like(obs.v_star) if obs.bias is None else obs.bias
        W1 = obs.W0 + obs.delta
        own = W1 @ obs.key(ident.insertion) + b
        other = next(k for k in KEYS if k != ident.insertion)
        miss = float(np.linalg.norm(W1 @ obs.key(other) + b - own) / np.linalg.norm(own))
        detail += f"; inserts at {ident.insertion}, misses {other} by {miss:.3g} (own value)"
    return _identified("insertion_key", ident.insertion, want, r, detail)


def _minimality(obs: Observation, ident: Identification, target: str) -> Measured:
    """ΔW against the smallest-C-norm update that writes the same value at the same key."""
    key_name = ident.insertion or (keys_of(target)[0] if target in VARIANTS else "k_star")
    k = obs.key(key_name)
    u = solve_c(obs.C, k)
    minimal = np.outer(obs.delta @ k, u) / float(u @ k)
    gap = float(np.linalg.norm(obs.delta - minimal) / np.linalg.norm(minimal))
    required = target in ("r-rome", "p-rome")
    return Measured(
        "c_norm_minimal",
        gap < MINIMALITY_TOL if required else None,
        gap,
        f"‖ΔW − ΔW_min‖/‖ΔW_min‖ = {gap:.3g} for its value at {key_name}"
        + ("" if required else f" (not required of {target})"),
    )


def _reference(obs: Observation, target: str) -> Measured:
    if target not in VARIANTS:
        return Measured("matches_reference", None, float("nan"), "no ROME variant to compare")
    ref = rank_one_update(
        obs.W0, obs.C, obs.k_star, obs.k_prompt, obs.v_star, target, bias=obs.bias
    )
    diff = float(np.linalg.norm(obs.delta - ref) / np.linalg.norm(ref))
    return Measured(
        "matches_reference",
        diff < REFERENCE_TOL,
        diff,
        f"‖ΔW − ΔW_ref({target})‖/‖ΔW_ref‖ = {diff:.3g} (our v*, float64)",
    )


def _denominator(obs: Observation, target: str) -> Measured:
    measured_norm = float(np.linalg.norm(obs.delta)) / obs.delta.size
    if target not in VARIANTS:
        return Measured("denominator", None, float("nan"), f"|Δ| = {measured_norm:.3g}")
    d = update_diagnostics(
        obs.W0, obs.C, obs.k_star, obs.k_prompt, obs.v_star, target, bias=obs.bias
    )
    ok = d.denominator > 0 and np.isfinite(measured_norm)
    return Measured(
        "denominator",
        bool(ok),
        d.denominator,
        f"u(k)ᵀk = {d.denominator:.3g} (whitened key cosine {d.whitened_key_cosine:.3g}); "
        f"|Δ| = ‖ΔW‖/numel = {measured_norm:.3g} (reference {d.delta_norm:.3g})",
    )


def _exact(name: str, diff: float | None, absent: str, what: str) -> Measured:
    """A property that holds only bit for bit (``diff`` the max difference, None: not run)."""
    if diff is None:
        return Measured(name, None, float("nan"), absent)
    return Measured(name, diff == 0.0, diff, f"{what} = {diff:.3g} (must be 0)")
