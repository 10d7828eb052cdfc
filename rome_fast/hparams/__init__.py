"""Hyperparameters: the per-model defaults and the hyperparameter files users hold."""
