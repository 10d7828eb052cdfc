"""What differs between editing methods: each method's solve and its own hyperparameters."""
