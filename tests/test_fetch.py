"""``rome data fetch`` against a local HTTP server on 127.0.0.1 (no network): files land in the
data folder, their SHA-256 is recorded on first download and verified afterwards."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rome_fast.cli.main import main
from rome_fast.infra.fetch import MANIFEST

FILES = {
    "dsets/counterfact.json": b'[{"case_id": 0}]',
    "dsets/zsre_mend_eval.json": b'[{"subject": "x"}]',
    "stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz": b"npz",
}


class QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str] = []  # noqa: RUF012  (the paths served, in order)

    def log_message(self, _format: str, *_args: object) -> None:
        QuietHandler.requests.append(self.path)


@contextmanager
def served(root: Path) -> Iterator[str]:
    """A local HTTP server for ``root``; always shut down on exit."""
    for relative, content in FILES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    QuietHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fetch(url: str, dest: Path, *what: str) -> int:
    return main(["data", "fetch", *what, "--out", str(dest), "--url-root", url])


def test_fetch_downloads_every_kind_and_records_checksums(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    with served(tmp_path / "site") as url:
        code = fetch(
            url, dest, "counterfact", "zsre", "stats", "--model", "gpt2-xl", "--layers", "17"
        )
    assert code == 0
    manifest = json.loads((dest / MANIFEST).read_text())
    expected = {
        "counterfact/counterfact.json": FILES["dsets/counterfact.json"],
        "zsre/zsre_mend_eval.json": FILES["dsets/zsre_mend_eval.json"],
    }
    npz = next(k for k in FILES if k.startswith("stats/"))
    expected[npz] = FILES[npz]
    assert set(manifest) == set(expected)
    for local, content in expected.items():
        assert (dest / local).read_bytes() == content
        assert manifest[local]["sha256"] == hashlib.sha256(content).hexdigest()
        assert manifest[local]["bytes"] == len(content)


def test_a_fetched_file_is_verified_not_downloaded_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "data"
    with served(tmp_path / "site") as url:
        assert fetch(url, dest, "zsre") == 0
        assert fetch(url, dest, "zsre") == 0
        assert QuietHandler.requests == ["/dsets/zsre_mend_eval.json"]
    assert "verified" in capsys.readouterr().out


def test_a_changed_file_fails_its_recorded_checksum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "data"
    with served(tmp_path / "site") as url:
        assert fetch(url, dest, "counterfact") == 0
        (dest / "counterfact" / "counterfact.json").write_bytes(b"[]")  # corrupted on disk
        assert fetch(url, dest, "counterfact") == 2
        err = capsys.readouterr().err
        assert "has SHA-256" in err
        assert "recorded" in err
        assert len(err.strip().splitlines()) == 1
        # the site changes the file: a forced fetch refuses it and keeps the file on disk
        (tmp_path / "site" / "dsets" / "counterfact.json").write_bytes(b'[{"case_id": 1}]')
        assert fetch(url, dest, "counterfact", "--force") == 2
    assert (dest / "counterfact" / "counterfact.json").read_bytes() == b"[]"
    assert sorted(p.name for p in (dest / "counterfact").iterdir()) == ["counterfact.json"]


def test_a_failed_download_leaves_nothing_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "data"
    with served(tmp_path / "site") as url:
        (tmp_path / "site" / "dsets" / "zsre_mend_eval.json").unlink()
        assert fetch(url, dest, "zsre") == 2
    assert "could not download" in capsys.readouterr().err
    assert not (dest / "zsre").exists() or not any((dest / "zsre").iterdir())


def test_stats_needs_a_model_and_layers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "fetch", "stats", "--out", "unused"]) == 2
    assert "needs --model and --layers" in capsys.readouterr().err
