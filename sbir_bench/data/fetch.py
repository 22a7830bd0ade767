"""``sbir-bench datasets fetch NAME``: download what the public scripts download, unpack it into the
layout ``datasets check`` recognises, and end with the check's verdict.

Sources are the ones the papers' download scripts name (../shared/field/dataset-copies.md; SEM-PCYC's
and SnMpNet's ``download_*.sh``, Doodle2Search's README, DomainNet's ``download_domainnet.sh``): plain
HTTP archives and Google Drive files (their "confirm" page followed). A transfer is written to
``<name>.part`` and resumed with an HTTP ``Range`` request after a dropped connection or an interrupted
command; the byte count is checked against the server's ``Content-Length`` and any published size,
and the SHA-256 against any published checksum. None of these sources publishes one, so the checksum
of what was downloaded is recorded in ``<data-root>/downloads/fetched.json`` marked
``"published": false`` (and said so), and a second fetch compares with it. ``--mirror URL`` reads every
file from ``URL/<file name>`` instead (an institutional copy; the tests' loopback server).

Without network, or for a source that is gone, one line names the source and the manual way: where to
put the file so that the next ``fetch`` unpacks it, or where to unpack it.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import DataError
from ..fileio import atomic_write_json, file_sha256
from ..log import get_logger, progress_bytes

log = get_logger(__name__)

CHUNK = 1 << 20
RETRIES = 5  # resumed attempts after a dropped connection, per file
TIMEOUT = 60  # seconds without a byte before a read counts as dropped
GDRIVE = "https://drive.google.com/uc?export=download&id={id}"


@dataclass(frozen=True)
class Download:
    """One file a dataset's public script downloads: where from, where it unpacks, what is published."""

    filename: str  # as saved under <data-root>/downloads/
    url: str  # http(s) URL, or gdrive:<file id>
    into: str  # the folder under <data-root> it is unpacked into ("" = do not unpack: a list file)
    sha256: str = ""  # a published checksum ("" = none published)
    size: int = 0  # a published size in bytes (0 = none published)
    source: str = ""  # whose script names it


_SEM_PCYC = "SEM-PCYC's download_datasets.sh (github.com/AnjanDutta/sem-pcyc), SnMpNet's downloads/"
_SKETCHY = (Download("Sketchy.7z", "gdrive:0B7ISyeE8QtDdTjE1MG9Gcy1kSkE", "Sketchy", source=_SEM_PCYC),
            Download("EXTEND_image_sketchy.zip", "gdrive:0B2U-hnwRkpRrdGZKTzkwbkEwVkk", "Sketchy", source=_SEM_PCYC))
_DOMAINNET_BASE = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
_DN = "download_domainnet.sh of SnMpNet, ProS, DePro and UCDR-Adapter"
SOURCES: Dict[str, Tuple[Download, ...]] = {
    "sketchy": _SKETCHY,
    "sketchy-fg": _SKETCHY[:1],
    "tuberlin": (
        Download("sketches_png.zip", "http://cybertron.cg.tu-berlin.de/eitz/projects/classifysketch/sketches_png.zip",
                 "TUBerlin", source=_SEM_PCYC),
        Download("ImageResized.zip", "gdrive:0B2U-hnwRkpRrMFVvTmFQa3dmSUk", "TUBerlin", source=_SEM_PCYC)),
    "quickdraw": tuple(
        Download(f"QuickDraw_{kind}_final.zip", f"http://datasets.cvc.uab.es/QuickDraw/QuickDraw_{kind}_final.zip",
                 "QuickDraw", source="Doodle2Search's README (github.com/sounakdey/doodle2search)")
        for kind in ("sketches", "images")),
    "domainnet": tuple(
        Download(f"{d}.zip", _DOMAINNET_BASE + ("groundtruth/" if d in ("clipart", "painting") else "") + f"{d}.zip",
                 "DomainNet", source=_DN)
        for d in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")),
}


def sources(name: str) -> Tuple[Download, ...]:
    """The downloads of dataset ``name``, or one line naming the datasets that have some."""
    if name not in SOURCES:
        raise DataError(f"no public download is known for {name!r}; fetch knows: {', '.join(SOURCES)} "
                        f"(the mini sets ship with sbir-bench)")
    return SOURCES[name]


def source_url(d: Download, mirror: Optional[str] = None) -> str:
    """Where ``d`` is read from: ``mirror/<file name>`` when a mirror is given, else its own address.

    >>> source_url(SOURCES["quickdraw"][0], "http://127.0.0.1:8000/copies")
    'http://127.0.0.1:8000/copies/QuickDraw_sketches_final.zip'
    """
    if mirror:
        return mirror.rstrip("/") + "/" + urllib.parse.quote(d.filename)
    if d.url.startswith("gdrive:"):
        return GDRIVE.format(id=d.url[len("gdrive:"):])
    return d.url


def manual_way(d: Download, downloads: Path, data_root: Path) -> str:
    """What to do by hand when ``d`` cannot be downloaded here."""
    origin = d.url if not d.url.startswith("gdrive:") else f"Google Drive file {d.url[7:]}"
    return (f"download {d.filename} from {origin} (named by {d.source}) or take a colleague's copy, put it in "
            f"{downloads}/ and rerun fetch (it unpacks what it finds), or unpack it into {data_root / d.into}/ "
            f"yourself (docs/datasets.md)")


class _Dropped(Exception):
    """The connection ended before the file did: resume."""


def _open(url: str, start: int, opener: Callable) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "sbir-bench", **({"Range": f"bytes={start}-"}
                                                                                    if start else {})})
    return opener(request, timeout=TIMEOUT)


def _gdrive_confirmed(response, url: str, opener: Callable, start: int):
    """Google Drive answers a large file with an HTML "can't scan for viruses" page: follow its confirm
    token (the cookie of old Drive, or the form of the current one); a page without one means the file
    is gone or private."""
    if "text/html" not in (response.headers.get("Content-Type") or ""):
        return response
    page = response.read(1 << 20).decode("utf-8", "replace")
    response.close()
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page))
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if "confirm" not in fields and token:
        fields["confirm"] = token.group(1)
    if "confirm" not in fields:
        raise DataError("the Google Drive file is gone or not shared (its page has no download link)")
    action = re.search(r'action="([^"]+)"', page)
    base = action.group(1) if action else url.split("?")[0]
    query = {**dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)), **fields}
    return _open(f"{base}?{urllib.parse.urlencode(query)}", start, opener)


def _transfer(url: str, part: Path, opener: Callable, show: Callable) -> int:
    """One attempt: append to ``part`` from where it ends; the file's full size (raises :class:`_Dropped`)."""
    have = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, have, opener)
        response = _gdrive_confirmed(response, url, opener, have)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # asked past the end: the part is the whole file
            return have
        raise
    with response:
        status = getattr(response, "status", 200)
        length = int(response.headers.get("Content-Length") or -1)
        if status == 206:
            total = have + length if length >= 0 else -1
        else:  # the server ignored the range: start again
            have, total = 0, length
        with open(part, "ab" if status == 206 else "wb") as out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (http.client.IncompleteRead, ConnectionError, socket.timeout, OSError) as exc:
                    raise _Dropped(str(exc)) from None
                if not chunk:
                    break
                out.write(chunk)
                have += len(chunk)
                show(have, total)
    if total >= 0 and have < total:
        raise _Dropped(f"{have:,} of {total:,} bytes")
    return have


def download(d: Download, downloads: Path, data_root: Path, mirror: Optional[str] = None,
             opener: Callable = urllib.request.urlopen) -> Path:
    """``downloads/<d.filename>``, downloaded (resumed where a ``.part`` was left) and checked."""
    final, part = downloads / d.filename, downloads / f"{d.filename}.part"
    if final.exists():
        return final
    downloads.mkdir(parents=True, exist_ok=True)
    url = source_url(d, mirror)
    show = progress_bytes(d.filename)
    for attempt in range(RETRIES + 1):
        try:
            size = _transfer(url, part, opener, show)
            break
        except _Dropped as exc:
            if attempt == RETRIES:
                raise DataError(f"{d.filename}: the connection to {url} kept dropping ({exc}; {RETRIES} resumed "
                                f"attempts); rerun fetch to resume from {part.stat().st_size:,} bytes") from None
            log.warning(f"{d.filename}: connection dropped ({exc}); resuming")
        except (urllib.error.URLError, socket.timeout, ConnectionError, DataError) as exc:
            reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else \
                getattr(exc, "reason", None) or exc
            raise DataError(f"cannot download {d.filename} from {url} ({reason}): no network here, or the source "
                            f"is gone; the manual way: {manual_way(d, downloads, data_root)}") from None
    if d.size and size != d.size:
        part.replace(downloads / f"{d.filename}.bad")
        raise DataError(f"{d.filename}: {size:,} bytes where the published size is {d.size:,} (truncated or another "
                        f"file); kept as {d.filename}.bad; rerun fetch to download it again")
    part.replace(final)
    return final


def verify(d: Download, path: Path, ledger: Dict[str, dict]) -> str:
    """Check ``path`` against the published checksum, else the one recorded by an earlier fetch; return
    the SHA-256. A mismatch moves the file aside (``.bad``) and is one line."""
    digest = file_sha256(path)
    expected, published = d.sha256, True
    if not expected and d.filename in ledger:
        expected, published = ledger[d.filename]["sha256"], False
    if expected and digest != expected:
        bad = path.with_name(path.name + ".bad")
        path.replace(bad)
        whose = "the published checksum" if published else "the checksum recorded when it was first fetched"
        raise DataError(f"{d.filename}: SHA-256 {digest[:16]}... differs from {whose} ({expected[:16]}...); moved "
                        f"to {bad.name}; rerun fetch to download it again")
    if not d.sha256:
        log.info(f"{d.filename}: no checksum is published; recorded sha256 {digest} in fetched.json")
    return digest


def _safe_members(archive: zipfile.ZipFile, dest: Path) -> List[zipfile.ZipInfo]:
    root = dest.resolve()
    for info in archive.infolist():
        target = (dest / info.filename).resolve()
        if target != root and root not in target.parents:
            raise DataError(f"{archive.filename}: member {info.filename!r} would be written outside {dest}; refused")
    return archive.infolist()


def unpack(path: Path, dest: Path) -> None:
    """Unpack a ``.zip`` (the standard library) or ``.7z`` (py7zr if installed, else a ``7z`` program)."""
    dest.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(dest, members=_safe_members(archive, dest))
        except zipfile.BadZipFile as exc:
            raise DataError(f"{path.name} is not a readable zip ({exc}): delete it and rerun fetch") from None
        return
    if path.suffix == ".7z":
        try:
            import py7zr  # optional: 7z archives (Sketchy's)
        except ImportError:
            program = shutil.which("7z") or shutil.which("7za") or shutil.which("7zz")
            if not program:
                raise DataError(f"{path.name} is a 7z archive: install 7-Zip (Debian: p7zip-full) or `pip install "
                                f"py7zr`, then rerun fetch; or unpack it into {dest}/ yourself") from None
            subprocess.run([program, "x", "-y", f"-o{dest}", str(path)], check=True, stdout=subprocess.DEVNULL)
            return
        with py7zr.SevenZipFile(path) as archive:
            archive.extractall(dest)
        return
    raise DataError(f"{path.name}: unknown archive type (zip or 7z expected)")


def fetch(name: str, data_root: Path, mirror: Optional[str] = None,
          opener: Callable = urllib.request.urlopen) -> Dict[str, dict]:
    """Download, verify and unpack every file of dataset ``name`` under ``data_root``; the ledger of
    what was fetched (``downloads/fetched.json``). The caller runs ``datasets check`` after it."""
    data_root = Path(data_root).expanduser()
    downloads = data_root / "downloads"
    ledger_path = downloads / "fetched.json"
    ledger: Dict[str, dict] = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    for d in sources(name):
        path = download(d, downloads, data_root, mirror, opener)
        digest = verify(d, path, ledger)
        entry = ledger.get(d.filename, {})
        if entry.get("unpacked") and entry.get("sha256") == digest and (data_root / d.into).is_dir():
            log.info(f"{d.filename}: already unpacked into {data_root / d.into}")
            continue
        log.info(f"unpacking {d.filename} into {data_root / d.into} ...")
        unpack(path, data_root / d.into)
        ledger[d.filename] = {"url": source_url(d, mirror), "bytes": path.stat().st_size, "sha256": digest,
                              "published": bool(d.sha256), "into": d.into, "unpacked": True}
        downloads.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ledger_path, ledger)
    return ledger
