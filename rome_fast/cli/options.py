"""Options shared by the commands that load a model and edit (``rome edit``, ``demo``,
``sweep``, ``eval``, ``conform``) and the model and editor they build; imported by
``rome_fast.cli.main`` and the subcommand modules alike, so none of them imports another."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rome_fast.cli.inputs import DEFAULT_VARIANTS, add_input_arguments, hparams_for_model
from rome_fast.cli.user_variants import SPEC_HELP
from rome_fast.cli.validate import int_at_least
from rome_fast.infra.cluster import Cluster
from rome_fast.infra.extras import import_ray
from rome_fast.model.precision import PRECISIONS

if TYPE_CHECKING:  # imported where used: a subcommand loads only what it needs
    from rome_fast.edit.editor import Editor
    from rome_fast.hparams.defaults import HParams
    from rome_fast.model.loader import LoadedModel
    from rome_fast.stats.collect import SecondMomentStats
    from rome_fast.stats.corpus import Corpus
    from rome_fast.stats.covariance import CovarianceProvider, StatsSource

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray cluster (pip install 'rome-verify[ray]')")
    group.add_argument(
        "--workers",
        type=int_at_least(1),
        default=None,
        help="run on N Ray actors, each with one model on one device (default: one process)",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="an existing Ray cluster (e.g. auto or ray://HEAD:10001); default: a local one",
    )


def cluster_from_args(args: argparse.Namespace) -> Cluster | None:
    """None when neither option is given: the run stays in this process, without Ray."""
    if args.workers is None and args.ray_address is None:
        return None
    cluster = Cluster(args.workers, args.ray_address)
    import_ray()  # a missing Ray is reported before the model is loaded
    return cluster


VARIANTS_HELP = (
    f"comma-separated, registered or {SPEC_HELP}; default: the hparams file's variant, "
    f"else {DEFAULT_VARIANTS}"
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that loads a model and edits it."""
    parser.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (embedded), random:<arch>, a local folder or a cached hub name",
    )
    parser.add_argument("--layer", type=int, default=None, help="edited layer (default: per model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--seed", type=int, default=0, help="seeds templates and optimization")
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
    add_input_arguments(parser)
    add_stats_arguments(parser)


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """Where C comes from: a public .npz file, a corpus, and how many documents."""
    stats = parser.add_argument_group("covariance statistics")
    stats.add_argument(
        "--stats-npz",
        type=Path,
        default=None,
        help="a second-moment file in the public ROME .npz format",
    )
    stats.add_argument(
        "--stats-corpus",
        type=Path,
        default=None,
        help="text file or folder for the statistics (default: WikiText-2 when "
        "present, else text sampled from the model)",
    )
    stats.add_argument(
        "--stats-samples",
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

    cluster = cluster_from_args(args) if hasattr(args, "workers") else None
    if cluster is None:
        return None
    from rome_fast.stats.sharded import sharded_collector

    return sharded_collector(cluster, args.model, DTYPES[args.dtype], args.seed)


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

    return load_model(args.model, dtype=DTYPES[args.dtype], device=args.device, seed=args.seed)


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
