"""Evaluation: CounterFact/zsRE data, scoring, GLUE, single and sequential runs, summaries,
gates."""
