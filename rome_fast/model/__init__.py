"""Hugging Face plumbing: loading, adapters per family, the edited site, hooks, tokens, kernels."""
