"""Plausible bugs planted in the pipeline above the update, each with the tests that must
catch it. Run by tests/pipeline_mutation.py (``nox -s mutation``); the snippets are checked
to occur exactly once by tests/test_pipeline_mutants.py in the default suite.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str
    file: str
    snippet: str  # occurs exactly once in ``file``
    replacement: str
    description: str
    selection: tuple[str, ...]  # pytest arguments: the narrow tests expected to catch it


HANDWORKED = "tests/test_handworked.py"
PROPERTIES = "tests/test_metric_properties.py"
PUBLIC_GPT2 = ("tests/test_public_evaluator.py", "-k", "agree and tiny-gpt2")
RUNS = "tests/test_runs.py"

MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- metrics
    Mutant(
        "es_counts_ties",
        "metrics",
        "rome_ref/metrics.py",
        "return float(np.mean(true > new)), float(np.mean(np.exp(-new) - np.exp(-true)))",
        "return float(np.mean(true >= new)), float(np.mean(np.exp(-new) - np.exp(-true)))",
        "a tie on the rewrite counts as an efficacy success",
        (HANDWORKED, "-k", "record_metrics"),
    ),
    Mutant(
        "em_sign",
        "metrics",
        "rome_ref/metrics.py",
        "return float(np.mean(true > new)), float(np.mean(np.exp(-new) - np.exp(-true)))",
        "return float(np.mean(true > new)), float(np.mean(np.exp(-true) - np.exp(-new)))",
        "EM/PM as p_true − p_new",
        (HANDWORKED, "-k", "record_metrics"),
    ),
    Mutant(
        "ns_backwards",
        "metrics",
        "rome_ref/metrics.py",
        "return float(np.mean(true < new)), float(np.mean(np.exp(-true) - np.exp(-new)))",
        "return float(np.mean(true > new)), float(np.mean(np.exp(-true) - np.exp(-new)))",
        "NS counts the new target winning on the neighborhood",
        (HANDWORKED, "-k", "record_metrics"),
    ),
    Mutant(
        "ps_backwards",
        "metrics",
        "rome_ref/metrics.py",
        "ps, pm = success_and_magnitude(*paraphrase)",
        "ps, pm = neighborhood_success_and_magnitude(*paraphrase)",
        "PS computed in the neighborhood's direction (PS backwards)",
        (HANDWORKED, "-k", "record_metrics"),
    ),
    Mutant(
        "s_arithmetic_mean",
        "metrics",
        "rome_ref/metrics.py",
        "return float(array.size / np.sum(1.0 / array))",
        "return float(np.mean(array))",
        "S as the arithmetic mean of ES, PS, NS",
        (PROPERTIES, "-k", "harmonic"),
    ),
    Mutant(
        "s_skips_zero_parts",
        "metrics",
        "rome_ref/metrics.py",
        "if np.any(array == 0):\n        return 0.0",
        "if np.any(array == 0):\n        array = array[array > 0]",
        "S averages only the non-zero parts instead of being 0",
        (PROPERTIES, "-k", "zero"),
    ),
    Mutant(
        "s_of_magnitudes",
        "metrics",
        "rome_ref/metrics.py",
        'table["S"] = harmonic_mean([table["ES"], table["PS"], table["NS"]])',
        'table["S"] = harmonic_mean([table["ES"], table["PS"], abs(table["NM"])])',
        "S takes the neighborhood magnitude instead of NS",
        (HANDWORKED, "-k", "table"),
    ),
    Mutant(
        "table_not_percent",
        "metrics",
        "rome_ref/metrics.py",
        "table = {m: 100.0 * float(np.mean([row[m] for row in rows])) for m in RECORD_METRICS}",
        "table = {m: float(np.mean([row[m] for row in rows])) for m in RECORD_METRICS}",
        "the table in fractions, not ×100 (gates against ×100 baselines then misread)",
        (HANDWORKED, "-k", "table"),
    ),
    Mutant(
        "entropy_weights_swapped",
        "metrics",
        "rome_ref/metrics.py",
        "2 / 3 * ngram_entropy(t, 2), 4 / 3 * ngram_entropy(t, 3)",
        "4 / 3 * ngram_entropy(t, 2), 2 / 3 * ngram_entropy(t, 3)",
        "bigram and trigram weights of the generation entropy swapped",
        (HANDWORKED, "-k", "generation_entropy"),
    ),
    Mutant(
        "unigram_entropy_natural_log",
        "metrics",
        "rome_ref/metrics.py",
        "return entropy_bits(counts.values()) / float(np.log2(vocab_size))",
        "return entropy_bits(counts.values()) / float(np.log(vocab_size))",
        "bits divided by nats: the normalized entropy is off by ln 2",
        (HANDWORKED, "-k", "unigram"),
    ),
    # ---------------------------------------------------------------- scoring glue
    Mutant(
        "paraphrase_scored_on_neighborhood_prompts",
        "scoring",
        "rome_fast/eval/runs.py",
        '"paraphrase": (list(case.paraphrase_prompts), case.target_true),',
        '"paraphrase": (list(case.neighborhood_prompts), case.target_true),',
        "the paraphrase metrics fed the neighborhood prompts",
        PUBLIC_GPT2,
    ),
    Mutant(
        "new_and_true_swapped",
        "scoring",
        "rome_fast/eval/runs.py",
        "new, true = nll[: len(prompts)], nll[len(prompts) :]",
        "true, new = nll[: len(prompts)], nll[len(prompts) :]",
        "the new target's NLLs stored as the true target's",
        PUBLIC_GPT2,
    ),
    Mutant(
        "nll_reads_one_position_late",
        "scoring",
        "rome_fast/eval/score.py",
        "first = offset + len(head) - 1",
        "first = offset + len(head)",
        "target tokens read from the logits one position late",
        ("tests/test_score.py", "-k", "unpadded"),
    ),
    Mutant(
        "target_without_leading_space",
        "scoring",
        "rome_fast/eval/score.py",
        'ids: list[int] = tokenizer(" " + target.lstrip(), add_special_tokens=False)["input_ids"]',
        'ids: list[int] = tokenizer(target.lstrip(), add_special_tokens=False)["input_ids"]',
        "the target tokenized without its leading space",
        ("tests/test_score.py", "-k", "leading_space"),
    ),
    Mutant(
        "nll_summed_over_tokens",
        "scoring",
        "rome_fast/eval/score.py",
        "out[chunk[row]] = float(-picked.mean())",
        "out[chunk[row]] = float(-picked.sum())",
        "the target NLL summed over tokens instead of averaged",
        (HANDWORKED, "-k", "multi_token_target"),
    ),
    Mutant(
        "target_with_special_tokens",
        "scoring",
        "rome_fast/eval/score.py",
        'ids: list[int] = tokenizer(" " + target.lstrip(), add_special_tokens=False)["input_ids"]',
        'ids: list[int] = tokenizer(" " + target.lstrip())["input_ids"]',
        "target tokenized with special tokens (a BOS-adding tokenizer scores its BOS)",
        ("tests/test_score.py", "-k", "special_tokens"),
    ),
    # ---------------------------------------------------------------- gates
    Mutant(
        "within_gate_one_sided",
        "gates",
        "rome_fast/eval/gates.py",
        "return abs(self.value - self.baseline) <= self.tolerance",
        "return self.value - self.baseline <= self.tolerance",
        "a within gate that only fails above its band",
        (PROPERTIES, "-k", "within"),
    ),
    Mutant(
        "at_least_ignores_tolerance",
        "gates",
        "rome_fast/eval/gates.py",
        "return self.value >= low",
        "return self.value >= self.baseline",
        "at-least gates without their tolerance",
        (HANDWORKED, "-k", "gate"),
    ),
    Mutant(
        "at_most_compared_with_low",
        "gates",
        "rome_fast/eval/gates.py",
        "return self.value <= high",
        "return self.value <= self.baseline",
        "at-most gates without their tolerance",
        (HANDWORKED, "-k", "gate"),
    ),
    Mutant(
        "missing_metric_passes",
        "gates",
        "rome_fast/eval/gates.py",
        "if self.value is None:\n            return False",
        "if self.value is None:\n            return True",
        "a metric the summary lacks passes the gate",
        ("tests/test_gates.py", "-k", "missing"),
    ),
    # ---------------------------------------------------------------- runs, flags, resume
    Mutant(
        "collapse_rule_without_history",
        "runs",
        "rome_fast/eval/runs.py",
        "if delta_norm is not None and len(history) >= cfg.collapse_min_history:",
        "if delta_norm is not None and len(history) >= 1:",
        "the |Δ| collapse rule applied before its minimum history",
        (HANDWORKED, "-k", "collapse"),
    ),
    Mutant(
        "entropy_threshold_without_ratio",
        "runs",
        "rome_fast/eval/runs.py",
        'return cfg.collapse_entropy_ratio * float(reference["ngram_entropy"])',
        'return float(reference["ngram_entropy"])',
        "the entropy collapse threshold is the unedited entropy itself, not half of it",
        ("tests/test_runs_accounting.py", "-k", "entropy_threshold"),
    ),
    Mutant(
        "resume_keeps_an_extra_row",
        "resume",
        "rome_fast/eval/runs.py",
        "rows = rows[:keep]",
        "rows = rows[: keep + 1]",
        "a resumed sequential run keeps a row past its checkpoint (a case counted twice)",
        ("tests/test_runs_accounting.py", "-k", "after_the_last_checkpoint"),
    ),
    Mutant(
        "checkpoint_one_behind",
        "resume",
        "rome_fast/eval/runs.py",
        "self._checkpoint(state_path, index + 1, work.edited_weights())",
        "self._checkpoint(state_path, index, work.edited_weights())",
        "the checkpoint records one edit fewer than it holds",
        (RUNS, "-k", "resumes"),
    ),
    Mutant(
        "resume_ignores_case_ids",
        "resume",
        "rome_fast/eval/runs.py",
        'if i >= len(cases) or row.get("case_id") != cases[i].case_id:',
        "if i >= len(cases):",
        "resume accepts a folder from another data slice",
        ("tests/test_runs_accounting.py", "-k", "another_slice"),
    ),
    Mutant(
        "sequential_table_from_immediate_scores",
        "runs",
        "rome_fast/eval/runs.py",
        "summary.update(ref.aggregate(_post_metrics(final, _failed_cases(rows))))",
        "summary.update(ref.aggregate(_post_metrics(rows, _failed_cases(rows))))",
        "the sequential table from the scores right after each edit, not after the last",
        ("tests/test_runs_accounting.py", "-k", "final_scores"),
    ),
    # ---------------------------------------------------------------- keys, templates, v*
    Mutant(
        "keys_swapped",
        "keys",
        "rome_fast/keys.py",
        "k_star=per_template.mean(0), k_prompt=per_template[bare], per_template=per_template",
        "k_star=per_template[bare], k_prompt=per_template.mean(0), per_template=per_template",
        "k* and k_prompt swapped",
        ("tests/test_keys.py",),
    ),
    Mutant(
        "template_without_period",
        "templates",
        "rome_fast/templates.py",
        'templates.append(escape_braces(text) + ". {}")',
        'templates.append(escape_braces(text) + " {}")',
        'templates as "<text> {}" instead of "<text>. {}"',
        ("tests/test_templates.py", "-k", "period or one_slot"),
    ),
    Mutant(
        "template_length_without_start_token",
        "templates",
        "rome_fast/templates.py",
        "ids = sample_top_k(model, first, length - 1, top_k, generator)",
        "ids = sample_top_k(model, first, length, top_k, generator)",
        "template length not counting the start token (one token too many)",
        ("tests/test_templates.py", "-k", "period"),
    ),
    Mutant(
        "template_top_k_10",
        "templates",
        "rome_fast/hparams.py",
        "context_template_top_k: int = 5",
        "context_template_top_k: int = 10",
        "templates sampled with top-k 10",
        ("tests/test_templates.py", "-k", "parameters"),
    ),
    Mutant(
        "weight_decay_squared",
        "v*",
        "rome_fast/value.py",
        "return torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(v_init) ** 2",
        "return torch.linalg.vector_norm(delta) ** 2 / torch.linalg.vector_norm(v_init) ** 2",
        "the weight decay with a squared ‖δ‖ (not the public code's)",
        ("tests/test_value.py", "-k", "fast_v_star_equals_the_full_forward_loop and not depth"),
    ),
    Mutant(
        "clamp_pushes_out",
        "v*",
        "rome_fast/value.py",
        "delta.mul_((radius / torch.linalg.vector_norm(delta)).clamp(max=1.0))",
        "delta.mul_((radius / torch.linalg.vector_norm(delta)).clamp(min=1.0))",
        "δ scaled up to the ball's surface instead of projected into it",
        ("tests/test_value.py", "-k", "clamped"),
    ),
    # ---------------------------------------------------------------- statistics
    Mutant(
        "stats_key_without_length",
        "statistics",
        "rome_fast/stats.py",
        'corpus_key = hashlib.sha256(f"{corpus.identifier}|len={max_length}".encode()).hexdigest()',
        'corpus_key = hashlib.sha256(f"{corpus.identifier}".encode()).hexdigest()',
        "the statistics cache ignores the document length",
        ("tests/test_stats.py", "-k", "cache_key_changes"),
    ),
    Mutant(
        "stats_key_without_dtype",
        "statistics",
        "rome_fast/stats.py",
        "return public_stats_path(root, model_dir, module_name, dtype, n_samples, corpus_name)",
        "return public_stats_path(root, model_dir, module_name, torch.float32, n_samples, "
        "corpus_name)",
        "the statistics cache ignores the dtype",
        ("tests/test_stats.py", "-k", "cache_key_changes"),
    ),
    Mutant(
        "stats_count_padding",
        "statistics",
        "rome_fast/stats.py",
        "keys = seen.input[mask.to(seen.input.device).bool()].to(dtype)  # (n_tok, d_in)",
        "keys = seen.input.flatten(0, 1).to(dtype)  # (n_tok, d_in)",
        "C accumulates the keys of padding tokens",
        ("tests/test_stats.py", "-k", "padding"),
    ),
    # ---------------------------------------------------------------- editor
    Mutant(
        "covariance_memo_ignores_layer",
        "editor",
        "rome_fast/editor.py",
        "if layer not in self._factors:",
        "if not self._factors:",
        "the editor's C memo computed once for whichever layer came first",
        ("tests/test_editor.py", "-k", "memo"),
    ),
    Mutant(
        "guard_skipped",
        "editor",
        "rome_fast/editor.py",
        "reasons = guard.reasons(denominator, delta_norm) if guard is not None else []",
        "reasons = []",
        "the disabling-edit guard never consulted",
        ("tests/test_editor.py", "-k", "guard"),
    ),
)
