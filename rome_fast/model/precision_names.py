"""The names of the v* loop's precisions, apart from ``precision`` (which imports torch), so
that the command line can offer them without loading torch."""

PRECISIONS = ("fp32", "tf32", "bf16")
