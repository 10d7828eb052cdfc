"""MEMIT (Meng et al. 2022b): least squares over a batch, spread over several layers."""
