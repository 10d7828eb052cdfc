"""The disabling-edit guard: refuses an edit whose |Δ| is too large or whose denominator is too
close to zero, before any weight is touched."""

from __future__ import annotations

from dataclasses import dataclass


class DisablingEditError(ValueError):
    """A guard refused an edit; the model was not touched."""

    def __init__(self, reasons: list[str], denominator: float, delta_norm: float) -> None:
        self.reasons = reasons
        self.denominator = denominator
        self.delta_norm = delta_norm
        super().__init__("refused a disabling edit (model unchanged): " + "; ".join(reasons))


@dataclass(frozen=True)
class Guard:
    """Refuses edits whose |Δ| is too large or whose denominator is too close to zero."""

    max_delta_norm: float | None = None
    min_abs_denominator: float | None = None

    def reasons(self, denominator: float, delta_norm: float) -> list[str]:
        found = []
        if self.max_delta_norm is not None and not delta_norm <= self.max_delta_norm:
            found.append(
                f"|Δ| = ‖ΔW‖_F/numel = {delta_norm:.3g} exceeds max_delta_norm = "
                f"{self.max_delta_norm:.3g}"
            )
        minimum = self.min_abs_denominator
        if minimum is not None and not abs(denominator) >= minimum:
            found.append(
                f"|denominator| = {abs(denominator):.3g} is below min_abs_denominator "
                f"= {self.min_abs_denominator:.3g} (the keys are nearly orthogonal "
                "under C⁻¹; try variant 'r-rome' or 'p-rome')"
            )
        return found
