"""Reference implementation (NumPy/SciPy, float64) of the ROME-family rank-one updates."""

from rome_ref import metrics
from rome_ref.diagnostics import UpdateDiagnostics, batched_closed_form, update_diagnostics
from rome_ref.update import VARIANTS, rank_one_update

__all__ = [
    "VARIANTS",
    "UpdateDiagnostics",
    "batched_closed_form",
    "metrics",
    "rank_one_update",
    "update_diagnostics",
]
