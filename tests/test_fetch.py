"""``rome data fetch`` against a local HTTP server on 127.0.0.1 (no network): files land in the
data folder, their SHA-256 is recorded on first download and verified afterwards; a server
that closes early leaves no file and no checksum."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rome_fast.cli.main import main
from rome_fast.infra.fetch import COUNTERFACT_FIELDS, MANIFEST, ZSRE_FIELDS


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def json_bytes(records: list[dict[str, object]]) -> bytes:
    return json.dumps(records).encode()


COUNTERFACT = "dsets/counterfact.json"
STATS = "stats/gpt2-xl/wikipedia_stats/transformer.h.17.mlp.c_proj_float32_mom2_100000.npz"
# Records with the fields of the public files (whole records in test_data.py).
FILES = {
    COUNTERFACT: json_bytes([dict.fromkeys(COUNTERFACT_FIELDS, 0)] * 3),
    "dsets/zsre_mend_eval.json": json_bytes([dict.fromkeys(ZSRE_FIELDS, "x")] * 3),
    STATS: npz_bytes({"mom2.mom2": np.eye(4), "mom2.count": np.array(7)}),
}
LOCAL = {COUNTERFACT: "counterfact/counterfact.json", STATS: STATS}
WHAT = {COUNTERFACT: ("counterfact",), STATS: ("stats", "--model", "gpt2-xl", "--layers", "17")}
SERVER_LIFETIME_S = 60  # a server a test forgot stops itself after this


class QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str] = []  # noqa: RUF012  (the paths served, in order)

    def log_message(self, _format: str, *_args: object) -> None:
        QuietHandler.requests.append(self.path)


@dataclass(frozen=True)
class Truncation:
    """What a server that closes early sends: ``sent`` of the file's bytes (a fraction), and
    the ``Content-Length`` it announces (a multiple of the file's size, or none)."""

    sent: float
    announced: float | None


TRUNCATIONS = {
    # the body ends before the announced length, where the part that arrived still parses
    "short of Content-Length, content whole": Truncation(sent=1.0, announced=2.0),
    # no length announced: only the content shows the file is cut
    "no Content-Length, content cut": Truncation(sent=0.5, announced=None),
    "short of Content-Length, content cut": Truncation(sent=0.5, announced=1.0),
}


def truncating_handler(truncation: Truncation) -> type[QuietHandler]:
    class Truncating(QuietHandler):
        def do_GET(self) -> None:
            content = FILES[self.path.lstrip("/")]
            self.send_response(200)
            if truncation.announced is not None:
                self.send_header("Content-Length", str(int(truncation.announced * len(content))))
            self.end_headers()
            self.wfile.write(content[: int(truncation.sent * len(content))])
            self.close_connection = True  # HTTP/1.0: the closed connection ends the body

    return Truncating


@contextmanager
def served(root: Path, handler: type[QuietHandler] = QuietHandler) -> Iterator[str]:
    """A local HTTP server for ``root``; shut down on exit, or after ``SERVER_LIFETIME_S``."""
    for relative, content in FILES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    QuietHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    deadline = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    thread.start()
    deadline.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        deadline.cancel()
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
        "counterfact/counterfact.json": FILES[COUNTERFACT],
        "zsre/zsre_mend_eval.json": FILES["dsets/zsre_mend_eval.json"],
        STATS: FILES[STATS],
    }
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
        changed = json_bytes([dict.fromkeys(COUNTERFACT_FIELDS, 1)])
        (tmp_path / "site" / "dsets" / "counterfact.json").write_bytes(changed)
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


@pytest.mark.parametrize("remote", [COUNTERFACT, STATS], ids=["json", "npz"])
@pytest.mark.parametrize("truncation", list(TRUNCATIONS))
def test_a_truncated_download_is_neither_kept_nor_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], truncation: str, remote: str
) -> None:
    dest = tmp_path / "data"
    cut = truncating_handler(TRUNCATIONS[truncation])
    with served(tmp_path / "site", cut) as url:
        assert fetch(url, dest, *WHAT[remote]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "is incomplete" in err
    assert "bytes" in err  # what arrived
    assert not (dest / MANIFEST).exists(), "a checksum was recorded from a failed download"
    leftovers = [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else []
    assert leftovers == [], f"a partial file was kept: {leftovers}"
    # the next fetch from a whole server keeps the file and records its own checksum
    with served(tmp_path / "site") as url:
        assert fetch(url, dest, *WHAT[remote]) == 0
    manifest = json.loads((dest / MANIFEST).read_text())
    digest = hashlib.sha256(FILES[remote]).hexdigest()
    assert manifest[LOCAL[remote]]["sha256"] == digest
