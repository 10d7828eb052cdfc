"""The public files ROME users expect, downloaded into the data folder (``rome data fetch``):

- ``counterfact``: ``counterfact.json`` (21,919 cases, original schema) → ``counterfact/``;
- ``zsre``: ``zsre_mend_eval.json`` (the MEND zsRE evaluation split) → ``zsre/``;
- ``stats``: the public key statistics ``.npz`` (``mom2`` over 100,000 Wikipedia samples) of
  a model's layers, ``--model gpt2-xl --layers 17`` → ``stats/<model>/wikipedia_stats/``,
  readable with ``--stats-npz``.

They come from the public ROME data site (``--url-root`` or ``$ROME_DATA_URL`` for a mirror).
The site publishes no checksums, so none are built in: the first download of a file records
its SHA-256 and size in ``checksums.json`` next to the files, and every later fetch verifies
the file on disk (and, with ``--force``, the downloaded copy) against that record. A
mismatch is an error that names both digests; a download is written to a temporary file and
moved into place only when complete: as many bytes as its ``Content-Length`` announced, and
content that parses as what it claims (``rome_fast.infra.download_checks``: the JSON records
with their fields, the ``.npz`` with its arrays). A download that fails either check is
removed, its checksum never recorded, and the error says what arrived.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rome_fast.infra.digests import sha256_of
from rome_fast.infra.download_checks import (
    IncompleteDownload,
    check_json_records,
    check_length,
    check_npz_arrays,
)

URL_ENV = "ROME_DATA_URL"
PUBLIC_ROOT = "https://rome.baulab.info/data"
MANIFEST = "checksums.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    remote: str  # path under the URL root
    local: str  # path under the data folder
    check: Callable[[Path], None]  # raises IncompleteDownload unless the file is whole


# The fields every record has in the public files (those rome_fast.eval.data reads among them).
COUNTERFACT_FIELDS = ("case_id", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts")
ZSRE_FIELDS = ("subject", "src", "rephrase", "alt", "loc", "loc_ans")
STATS_ARRAYS = ("mom2.mom2", "mom2.count")  # the public second-moment file's arrays
DATASETS = {
    "counterfact": RemoteFile(
        "dsets/counterfact.json",
        "counterfact/counterfact.json",
        partial(check_json_records, fields=COUNTERFACT_FIELDS),
    ),
    "zsre": RemoteFile(
        "dsets/zsre_mend_eval.json",
        "zsre/zsre_mend_eval.json",
        partial(check_json_records, fields=ZSRE_FIELDS),
    ),
}
# The models the public statistics exist for, and their edited module per layer.
STATS_MODULES = {
    "gpt2-medium": "transformer.h.{}.mlp.c_proj",
    "gpt2-large": "transformer.h.{}.mlp.c_proj",
    "gpt2-xl": "transformer.h.{}.mlp.c_proj",
    "EleutherAI_gpt-j-6B": "transformer.h.{}.mlp.fc_out",
}


class FetchError(ValueError):
    """A download failed or a file does not match its recorded checksum."""


def stats_file(model: str, layer: int) -> RemoteFile:
    """The public statistics file of ``model``'s edited module at ``layer``."""
    if model not in STATS_MODULES:
        raise FetchError(
            f"no public statistics for model {model!r}; available: {', '.join(STATS_MODULES)}"
        )
    name = f"{STATS_MODULES[model].format(layer)}_float32_mom2_100000.npz"
    path = f"stats/{model}/wikipedia_stats/{name}"
    return RemoteFile(path, path, partial(check_npz_arrays, arrays=STATS_ARRAYS))


def _download(item: RemoteFile, url: str, target: Path) -> None:
    """``url`` to ``target``, through a temporary file moved into place when complete (its
    ``Content-Length`` and ``item.check`` passed); a partial file is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial_file = target.with_name(f"{target.name}.part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial_file.open("wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
            announced = response.headers.get("Content-Length")
        check_length(partial_file.stat().st_size, announced)
        item.check(partial_file)
        partial_file.replace(target)
    except IncompleteDownload as error:
        raise FetchError(
            f"the download of {url} is incomplete: {error}; nothing was kept and no checksum "
            f"recorded: fetch again, or pass --url-root (or set {URL_ENV}) to a mirror"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise FetchError(
            f"could not download {url}: {error}; check the connection, or pass --url-root "
            f"(or set {URL_ENV}) to a mirror of the public ROME data"
        ) from None
    finally:
        partial_file.unlink(missing_ok=True)


class Fetcher:
    """Downloads into ``dest`` and keeps its ``checksums.json`` record."""

    def __init__(self, dest: Path, url_root: str) -> None:
        self.dest, self.url_root = dest, url_root.rstrip("/")
        self.manifest_path = dest / MANIFEST
        self.manifest: dict[str, dict[str, Any]] = (
            json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else {}
        )

    def _check(self, item: RemoteFile, path: Path, what: str) -> str:
        digest = sha256_of(path)
        recorded = self.manifest.get(item.local)
        if recorded is not None and recorded["sha256"] != digest:
            raise FetchError(
                f"{what} {path} has SHA-256 {digest}, but {self.manifest_path} recorded "
                f"{recorded['sha256']} when it was first downloaded from {recorded['url']}; "
                "delete the file and fetch again (--force) if the record is the one to trust, "
                f"or remove its entry from {MANIFEST} to accept the new file"
            )
        return digest

    def fetch(self, item: RemoteFile, *, force: bool = False) -> str:
        """Fetch one file (or verify the copy on disk); returns a one-line report."""
        target = self.dest / item.local
        url = f"{self.url_root}/{item.remote}"
        if target.is_file() and not force:
            if item.local not in self.manifest:
                return f"kept {target} (no checksum recorded: not downloaded by rome data fetch)"
            self._check(item, target, "the file")
            return f"verified {target} (SHA-256 as recorded)"
        fresh = target.with_name(f"{target.name}.new{os.getpid()}")
        try:
            _download(item, url, fresh)
            digest = self._check(item, fresh, "the download of")
            fresh.replace(target)
        finally:
            fresh.unlink(missing_ok=True)
        known = item.local in self.manifest
        self.manifest[item.local] = {
            "sha256": digest,
            "bytes": target.stat().st_size,
            "url": url,
        }
        self.manifest_path.write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
        how = "SHA-256 as recorded" if known else f"SHA-256 {digest} recorded"
        return f"downloaded {target} ({target.stat().st_size} bytes, {how})"
