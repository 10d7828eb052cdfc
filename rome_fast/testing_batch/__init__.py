"""The property battery for batched editors (MEMIT, EMMET, AlphaEdit): cases and checks."""
