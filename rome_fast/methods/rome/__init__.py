"""ROME, r-ROME and p-ROME: the rank-one insertion and its variant registry."""
