"""AlphaEdit (Fang et al. 2025): MEMIT's update projected onto the null space of preserved keys."""
