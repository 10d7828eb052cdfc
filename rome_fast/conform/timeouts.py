"""How long an editor under test may take per edit (no torch here: `rome conform --help`
prints it)."""

# Per edit. The slowest edit the project measured is the public code's flow on SmolLM2 with
# 20 v* steps, 49 s on one CPU thread (docs/results/bench-cpu-1thread.json,
# test_edit_smollm2[naive]); 600 s is 12× that, room for a shared machine and larger steps.
DEFAULT_TIMEOUT = 600.0
