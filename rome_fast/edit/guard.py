"""The disabling-edit guard: refuses an edit whose |Δ| at any site is too large or whose
denominator is too close to zero, before any weight is touched."""

from __future__ import annotations

from dataclasses import dataclass

from rome_fast.edit.request import normalized_delta_norm
from rome_fast.solve.low_rank import Update


class DisablingEditError(ValueError):
    """A guard refused an edit; the model was not touched."""

    def __init__(self, reasons: list[str], denominator: float | None, delta_norm: float) -> None:
        self.reasons = reasons
        self.denominator = denominator
        self.delta_norm = delta_norm  # the largest site's
        super().__init__("refused a disabling edit (model unchanged): " + "; ".join(reasons))


@dataclass(frozen=True)
class Guard:
    """Refuses edits whose |Δ| at a site is too large or whose denominator is too close to
    zero."""

    max_delta_norm: float | None = None
    min_abs_denominator: float | None = None

    def check(self, update: Update, denominator: float | None = None) -> None:
        """Raise ``DisablingEditError`` naming each failing site (and the denominator; None
        for a method without one, the batched ones)."""
        norms = {site.module_name: normalized_delta_norm(site.factors) for site in update}
        found = [
            f"{name}: {reason}"
            for name, norm in norms.items()
            for reason in self._delta_norm_reasons(norm)
        ]
        found += self._denominator_reasons(denominator)
        if found:
            raise DisablingEditError(found, denominator, max(norms.values()))

    def _delta_norm_reasons(self, delta_norm: float) -> list[str]:
        if self.max_delta_norm is None or delta_norm <= self.max_delta_norm:
            return []
        return [
            f"|Δ| = ‖ΔW‖_F/numel = {delta_norm:.3g} exceeds max_delta_norm = "
            f"{self.max_delta_norm:.3g}"
        ]

    def _denominator_reasons(self, denominator: float | None) -> list[str]:
        minimum = self.min_abs_denominator
        if minimum is None or denominator is None or abs(denominator) >= minimum:
            return []
        return [
            f"|denominator| = {abs(denominator):.3g} is below min_abs_denominator "
            f"= {minimum:.3g} (the keys are nearly orthogonal under C⁻¹; try variant 'r-rome' "
            "or 'p-rome')"
        ]
