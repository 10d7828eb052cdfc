"""Options shared by the commands that load a model (``rome edit``, ``demo``, ``sweep``,
``stats``, ``eval``, ``conform``) and the model and editor they build; imported by
``rome_fast.cli.main`` and the subcommand modules alike, so none of them imports another.
Defining the options imports nothing heavy (``rome --help`` loads no torch): what needs torch
is imported where an option is used."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rome_fast.cli.inputs import (
    DEFAULT_VARIANTS,
    add_hparams_argument,
    add_templates_argument,
    hparams_for_model,
)
from rome_fast.cli.validate import SPEC_HELP, int_at_least
from rome_fast.infra.cluster import Cluster
from rome_fast.infra.extras import import_ray
from rome_fast.model.precision_names import PRECISIONS

if TYPE_CHECKING:  # imported where used: a subcommand loads only what it needs
    import torch

    from rome_fast.edit.editor import Editor
    from rome_fast.hparams.defaults import HParams
    from rome_fast.model.loader import LoadedModel
    from rome_fast.stats.collect import SecondMomentStats
    from rome_fast.stats.corpus import Corpus
    from rome_fast.stats.covariance import CovarianceProvider, StatsSource

DTYPES = ("float32", "float64", "bfloat16", "float16")  # names of torch dtypes


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype ``--dtype NAME`` names (one of ``DTYPES``)."""
    import torch

    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype), name
    return dtype


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray cluster (pip install 'rome-verify[ray]')")
    group.add_argument(
        "--workers",
        metavar="N",
        type=int_at_least(1),
        default=None,
        help="run on N Ray actors, each with one model on one device (default: one process)",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        default=None,
        help="an existing Ray cluster, e.g. auto or ray://HEAD:10001 (default: a local one)",
    )


def cluster_from_args(args: argparse.Namespace) -> Cluster | None:
    """None when neither option is given: the run stays in this process, without Ray."""
    if args.workers is None and args.ray_address is None:
        return None
    cluster = Cluster(args.workers, args.ray_address)
    import_ray()  # a missing Ray is reported before the model is loaded
    return cluster


VARIANTS_HELP = (
    f"comma-separated, registered or {SPEC_HELP} (default: the hparams file's variant, "
    f"else {DEFAULT_VARIANTS})"
)


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="MODEL",
        default="smollm2",
        help="smollm2 (embedded), random:<arch>, a local folder or a cached hub name",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        default=None,  # resolved when the command runs: asking CUDA here would load torch
        help="cpu, cuda, cuda:N (default: cuda when available, else cpu)",
    )


def add_layer_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layer", metavar="N", type=int, default=None, help="edited layer (default: per model)"
    )


def add_seed_option(parser: argparse.ArgumentParser, seeds: str) -> None:
    parser.add_argument("--seed", metavar="N", type=int, default=0, help=f"seeds {seeds}")


def add_model_arguments(parser: argparse.ArgumentParser, *, batched: bool = False) -> None:
    """The model a command loads, its edited layer and where C comes from (``batched``: the
    command also edits with ``--method``)."""
    add_model_option(parser)
    add_layer_option(parser)
    add_device_option(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="the model's dtype")
    add_seed_option(parser, "random models, templates and optimization")
    add_hparams_argument(parser, batched=batched)
    add_stats_arguments(parser)


def add_generation_tokens_option(
    parser: argparse.ArgumentParser, *, low: int, default: int | None, stated: str = ""
) -> None:
    """Tokens per greedy continuation: one name for it on every command that generates.
    ``default`` None with ``stated`` (the default said in the help) lets a command tell a
    given value from its default."""
    parser.add_argument(
        "--generation-tokens",
        metavar="N",
        type=int_at_least(low),
        default=default,
        help="tokens per generated continuation" + (f" (default: {stated})" if stated else ""),
    )


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    """How our editor edits: its implementation, the v* loop's precision, fixed templates."""
    parser.add_argument(
        "--impl",
        choices=("fast", "naive"),
        default="fast",
        help="naive follows the public code's compute flow (a speed yardstick)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="matmuls of the v* loop (tf32: CUDA only); keys and the update stay float32",
    )
    add_templates_argument(parser)


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """Where C comes from: a public .npz file, a corpus, and how many documents."""
    stats = parser.add_argument_group("covariance statistics")
    stats.add_argument(
        "--stats-npz",
        metavar="FILE",
        type=Path,
        default=None,
        help="a second-moment file in the public ROME .npz format (default: none: computed)",
    )
    stats.add_argument(
        "--stats-corpus",
        metavar="PATH",
        type=Path,
        default=None,
        help="text file or folder for the statistics (default: WikiText-2 when "
        "present, else text sampled from the model)",
    )
    stats.add_argument(
        "--stats-samples",
        metavar="N",
        type=int_at_least(1),
        default=None,
        help="documents used for the statistics (default: per model)",
    )


def corpus_from_args(args: argparse.Namespace) -> Corpus | None:
    """The user's ``--stats-corpus`` (a WikiText folder or a text file), or None (default)."""
    from rome_fast.stats import corpus as corpora

    path = args.stats_corpus
    if path is None:
        return None
    return corpora.wikitext(path) if path.is_dir() else corpora.text_files([path])


def stats_collector(args: argparse.Namespace) -> Callable[..., SecondMomentStats] | None:
    """With ``--workers``/``--ray-address`` (where the command has them), statistics that are
    not cached yet are computed sharded over Ray actors; None: in this process."""
    if hasattr(args, "workers"):
        cluster = cluster_from_args(args)
        if cluster is not None:
            from rome_fast.stats.sharded import sharded_collector

            return sharded_collector(cluster, args.model, torch_dtype(args.dtype), args.seed)
    return None


def stats_provider(args: argparse.Namespace, hparams: HParams) -> CovarianceProvider:
    """C for a layer, from the user's .npz, the user's corpus, or the default corpus."""
    from rome_fast.stats.covariance import default_covariance

    return default_covariance(hparams, stats_source(args))


def stats_source(args: argparse.Namespace) -> StatsSource:
    """The user's statistics options: ``--stats-corpus``, ``--stats-npz``, ``--stats-samples``,
    and Ray for statistics not cached yet (``--workers``/``--ray-address``)."""
    from rome_fast.stats.covariance import StatsSource

    return StatsSource(
        corpus=corpus_from_args(args),
        npz_path=args.stats_npz,
        n_samples=args.stats_samples,
        collect=stats_collector(args),
    )


def editor_class(args: argparse.Namespace) -> type[Editor]:
    """``Editor``, or ``NaiveEditor`` for ``--impl naive``."""
    if args.impl == "naive":
        from rome_fast.edit.naive import NaiveEditor

        return NaiveEditor
    from rome_fast.edit.editor import Editor

    return Editor


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    from rome_fast.model.loader import load_model

    return load_model(args.model, dtype=torch_dtype(args.dtype), device=args.device, seed=args.seed)


def build_editor(args: argparse.Namespace) -> Editor:
    """Load the model and an editor (fast or naive) with the statistics the options ask for."""
    loaded = load_from_args(args)
    hparams = hparams_for_model(args, loaded)
    return editor_class(args)(
        loaded,
        hparams=hparams,
        seed=args.seed,
        stats=stats_provider(args, hparams),
        templates=args.fixed_templates,
    )
