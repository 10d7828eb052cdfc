"""EMMET (Gupta et al. 2024): ROME's equality constraint for a whole batch."""
