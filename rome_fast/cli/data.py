"""``rome data fetch``: CounterFact, zsRE or a model's public statistics into the data folder
(``rome_fast.infra.fetch`` downloads and verifies them)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rome_fast.cli.parsing import deprecated_alias
from rome_fast.cli.validate import comma_integers
from rome_fast.infra.datadir import default_data_dir
from rome_fast.infra.fetch import (
    DATASETS,
    PUBLIC_ROOT,
    STATS_MODULES,
    URL_ENV,
    Fetcher,
    FetchError,
    RemoteFile,
    stats_file,
)


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "what", nargs="+", choices=("counterfact", "zsre", "stats"), help="what to download"
    )
    parser.add_argument(
        "--model",
        choices=sorted(STATS_MODULES),
        default=None,
        help="stats: the model whose public statistics to fetch (default: none; needed by stats)",
    )
    parser.add_argument(
        "--layers",
        metavar="N,N",
        default=None,
        help="stats: comma-separated layers, e.g. 17 or 5,17 (default: none; needed by stats)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=None,
        help="the data folder (default: $ROME_DATA_DIR, else the user cache's data/)",
    )
    deprecated_alias(parser, "--dest", "--out")
    parser.add_argument(
        "--url-root",
        metavar="URL",
        default=None,
        help=f"where the public files are (default: ${URL_ENV}, else {PUBLIC_ROOT})",
    )
    parser.add_argument(
        "--force", action="store_true", help="download again even if the file is present"
    )


def requested_files(args: argparse.Namespace) -> list[RemoteFile]:
    files = [DATASETS[w] for w in dict.fromkeys(args.what) if w != "stats"]
    if "stats" in args.what:
        if args.model is None or args.layers is None:
            raise FetchError(
                "rome data fetch stats needs --model and --layers, e.g. "
                "rome data fetch stats --model gpt2-xl --layers 17"
            )
        layers = comma_integers(args.layers, "--layers")
        files += [stats_file(args.model, layer) for layer in layers]
    return files


def run_fetch(args: argparse.Namespace) -> int:
    files = requested_files(args)
    out = args.out if args.out is not None else default_data_dir()
    fetcher = Fetcher(out, args.url_root or os.environ.get(URL_ENV, PUBLIC_ROOT))
    for item in files:
        print(fetcher.fetch(item, force=args.force))
    return 0
