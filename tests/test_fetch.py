"""``sbir-bench datasets fetch``: against a local HTTP server on the loopback address serving generated
archives, with a dropped connection, an interrupted earlier transfer, a truncated file, a wrong
checksum, Google Drive's confirm page, no network, and an archive that writes outside its folder."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import official_classes
from PIL import Image

from sbir_bench.cli import main
from sbir_bench.data import fetch as fetching
from sbir_bench.errors import DataError


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def quickdraw_archives() -> dict:
    """Doodle2Search's two zips, one tiny image per official class."""
    out = {}
    for kind, folder, colour in (("sketches", "QuickDraw_sketches_final", (255, 255, 255)),
                                 ("images", "QuickDraw_images_final", (30, 120, 200))):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i, cname in enumerate(official_classes("quickdraw")):
                z.writestr(f"{folder}/{cname}/{kind}_{i}.png", _png(colour))
        out[f"QuickDraw_{kind}_final.zip"] = buf.getvalue()
    return out


class Server:
    """Files by name, with HTTP Range support; ``drop_once`` names files whose first response stops
    half-way; ``requests`` logs (path, Range header)."""

    def __init__(self, files: dict):
        self.files, self.drop_once, self.requests, self.pages = dict(files), set(), [], {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                name = self.path.split("?")[0].rsplit("/", 1)[-1]
                if self.path in server.pages:  # an HTML page (Google Drive's confirm step)
                    body = server.pages[self.path].encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if name in server.drop_once:
                    server.drop_once.discard(name)
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server(quickdraw_archives())
    yield s
    s.close()


def fetch_cli(root: Path, *extra: str):
    return CliRunner().invoke(main, ["datasets", "fetch", "quickdraw", "--data-root", str(root), "--quiet", *extra])


def test_fetch_downloads_unpacks_records_the_checksums_and_ends_with_the_check(server, tmp_path):
    result = fetch_cli(tmp_path, "--mirror", f"{server.url}/copies")
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("quickdraw: usable (0 problem(s), 2 warning(s))")  # counts differ: warned
    assert "no checksum is published for QuickDraw_images_final.zip, QuickDraw_sketches_final.zip" in result.output
    assert len(list((tmp_path / "QuickDraw" / "QuickDraw_sketches_final").iterdir())) == 110
    ledger = json.loads((tmp_path / "downloads" / "fetched.json").read_text())
    import hashlib
    for name, data in server.files.items():
        assert ledger[name]["sha256"] == hashlib.sha256(data).hexdigest() and ledger[name]["published"] is False
    again = fetch_cli(tmp_path, "--mirror", f"{server.url}/copies")  # nothing downloaded twice
    assert again.exit_code == 0 and len(server.requests) == 2


def test_a_dropped_connection_is_resumed_with_a_range_request(server, tmp_path):
    server.drop_once.add("QuickDraw_images_final.zip")
    result = fetch_cli(tmp_path, "--mirror", server.url)
    assert result.exit_code == 0, result.output
    ranges = [r for p, r in server.requests if p.endswith("QuickDraw_images_final.zip")]
    half = len(server.files["QuickDraw_images_final.zip"]) // 2
    assert ranges == [None, f"bytes={half}-"]
    assert (tmp_path / "downloads" / "QuickDraw_images_final.zip").read_bytes() == server.files["QuickDraw_images_final.zip"]


def test_an_interrupted_earlier_transfer_continues_where_its_part_file_ends(server, tmp_path):
    data = server.files["QuickDraw_sketches_final.zip"]
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "QuickDraw_sketches_final.zip.part").write_bytes(data[:1000])
    assert fetch_cli(tmp_path, "--mirror", server.url).exit_code == 0
    assert (server.requests[0][1]) == "bytes=1000-"
    assert (tmp_path / "downloads" / "QuickDraw_sketches_final.zip").read_bytes() == data


def _published(monkeypatch, **fields):
    d = fetching.SOURCES["quickdraw"]
    monkeypatch.setitem(fetching.SOURCES, "quickdraw", (fetching.Download(**{**d[0].__dict__, **fields}), d[1]))


def test_a_truncated_file_is_refused_kept_aside_and_nothing_is_unpacked(server, tmp_path, monkeypatch):
    full = len(server.files["QuickDraw_sketches_final.zip"])
    _published(monkeypatch, size=full + 5000)  # the server holds a truncated copy
    result = fetch_cli(tmp_path, "--mirror", server.url)
    assert result.exit_code == 3 and f"{full:,} bytes where the published size is {full + 5000:,}" in result.output
    assert (tmp_path / "downloads" / "QuickDraw_sketches_final.zip.bad").is_file()
    assert not (tmp_path / "QuickDraw").exists()


def test_a_wrong_published_checksum_is_one_line_and_nothing_is_unpacked(server, tmp_path, monkeypatch):
    _published(monkeypatch, sha256="0" * 64)
    result = fetch_cli(tmp_path, "--mirror", server.url)
    assert result.exit_code == 3 and "differs from the published checksum" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "QuickDraw").exists()
    assert (tmp_path / "downloads" / "QuickDraw_sketches_final.zip.bad").is_file()


def test_a_file_that_changed_since_it_was_first_fetched_is_refused(server, tmp_path):
    assert fetch_cli(tmp_path, "--mirror", server.url).exit_code == 0
    (tmp_path / "downloads" / "QuickDraw_images_final.zip").unlink()
    server.files["QuickDraw_images_final.zip"] = quickdraw_archives()["QuickDraw_sketches_final.zip"]
    result = fetch_cli(tmp_path, "--mirror", server.url)
    assert result.exit_code == 3 and "differs from the checksum recorded when it was first fetched" in result.output


def test_without_network_one_line_names_the_source_and_the_manual_way(tmp_path):
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there: connection refused
    result = fetch_cli(tmp_path, "--mirror", f"http://127.0.0.1:{port}")
    assert result.exit_code == 3 and len(result.output.strip().splitlines()) == 1
    assert "cannot download QuickDraw_sketches_final.zip" in result.output and "the manual way" in result.output
    assert f"{tmp_path / 'downloads'}/" in result.output and "datasets.cvc.uab.es" in result.output


def test_a_source_that_is_gone_says_so_and_the_manual_way(server, tmp_path):
    server.files.pop("QuickDraw_images_final.zip")
    result = fetch_cli(tmp_path, "--mirror", server.url)
    assert result.exit_code == 3 and "(HTTP 404 Not Found)" in result.output and "the manual way" in result.output


def test_google_drives_confirm_page_is_followed(tmp_path, monkeypatch):
    archive = quickdraw_archives()["QuickDraw_sketches_final.zip"]
    s = Server({"uc": archive})
    try:
        monkeypatch.setattr(fetching, "GDRIVE", s.url + "/uc?export=download&id={id}")
        s.pages["/uc?export=download&id=ABC"] = (
            '<form action="' + s.url + '/uc" method="get"><input type="hidden" name="id" value="ABC">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u1"></form>')
        d = fetching.Download("x.zip", "gdrive:ABC", "X")
        path = fetching.download(d, tmp_path / "downloads", tmp_path)
        assert path.read_bytes() == archive
        assert s.requests[1][0].startswith("/uc?") and "confirm=t" in s.requests[1][0] and "uuid=u1" in s.requests[1][0]
        s.pages["/uc?export=download&id=GONE"] = "<html>Sorry, the file you have requested does not exist.</html>"
        with pytest.raises(DataError, match="gone or not shared"):
            fetching.download(fetching.Download("y.zip", "gdrive:GONE", "Y"), tmp_path / "downloads", tmp_path)
    finally:
        s.close()


def test_an_archive_writing_outside_its_folder_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.txt", "x")
    with pytest.raises(DataError, match="outside"):
        fetching.unpack(evil, tmp_path / "into")
    assert not (tmp_path / "outside.txt").exists()


def test_an_unknown_dataset_is_one_line_before_anything_is_written(tmp_path):
    result = CliRunner().invoke(main, ["datasets", "fetch", "mini", "--data-root", str(tmp_path)])
    assert result.exit_code == 3 and "fetch knows: sketchy" in result.output and not list(tmp_path.iterdir())
