"""Fetch a checkpoint file (Hugging Face Hub, plain URL or Google Drive) into the cache and return it verified.

Every returned file has been checked against a sha256: the pinned one when the registry has it, otherwise the one
recorded in `<file>.sha256` when the file was first downloaded (so a file that changed on disk is caught). As no
upstream publishes digests, the first download is also checked for what it is: an HTML page is refused, and the
caller's `validate` (for checkpoints: a complete, readable archive) must pass before the file takes its final name.
`force=True` drops the cached copy and downloads again.
"""
from __future__ import annotations

import hashlib
import html.parser
import http.client
import inspect
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError

import huggingface_hub.constants
from filelock import FileLock  # a dependency of huggingface_hub, which uses it for the same purpose
from huggingface_hub.errors import (
    EntryNotFoundError,
    FileMetadataError,
    GatedRepoError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm.auto import tqdm

from .errors import ConfigError, Error

TIMEOUT = 30  # seconds per connect/read; a stalled host fails instead of hanging a training job
CHUNK = 1 << 20
GDRIVE = "https://drive.usercontent.google.com"


class DownloadError(Error, RuntimeError):
    """A file that could not be fetched or verified: the message names the file, the source and what to do."""


class ChecksumError(DownloadError):
    pass


class OfflineError(DownloadError):
    pass


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    # huggingface_hub.constants is read here, not imported by name, so tests and late configuration can patch it
    return Path(override or os.environ.get("MIMZOO_CACHE") or huggingface_hub.constants.HF_HUB_CACHE).expanduser()


_cache_root = cache_dir  # fetch_source()'s cache_dir argument shadows the function


def fetch_source(source: dict, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, name: str | None = None, validate=None, force: bool = False) -> Path:
    """A local, verified copy of `source`: {"hf": {"repo", "filename", "revision"}}, {"url": ...} or
    {"gdrive": {"id", "filename"?}}.

    Args:
        sha256: the pinned digest, when the registry has one.
        name: the zoo name, only to make error messages actionable.
        validate: `validate(path)` raises (an `Error`) when a freshly downloaded file is not what it should be;
            the file is then deleted, never cached.
        force: forget the cached copy (and any partial download) and download again.
    """
    root = _cache_root(cache_dir)
    kinds = [k for k in ("hf", "url", "gdrive") if k in source]
    if len(kinds) != 1 or len(source) != 1:
        raise ConfigError(f"a download source is exactly one of {{'hf': {{...}}}}, {{'url': ...}}, "
                         f"{{'gdrive': {{'id': ...}}}}; got {source!r}")
    if "hf" in source:
        return _fetch_hf(source["hf"], root, sha256, progress, name, validate, force)
    if "url" in source:
        url = source["url"]
        basename = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
        basename = "download" if basename in ("", ".", "..") else basename
        final = root / "mimzoo-url" / _key(url) / basename
        return _fetch_url(url, final, sha256, progress, name, validate=validate, force=force)
    file_id = source["gdrive"]["id"]
    base = os.environ.get("MIMZOO_GDRIVE_ENDPOINT", GDRIVE).rstrip("/")
    url = f"{base}/download?" + urllib.parse.urlencode({"id": file_id, "export": "download"})
    final = root / "mimzoo-url" / _key(f"gdrive:{file_id}") / source["gdrive"].get("filename", file_id)
    return _fetch_url(url, final, sha256, progress, name, resolve=_gdrive_confirm, validate=validate, force=force)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- Hugging Face Hub ------------------------------------------------------------------------------------------

def _fetch_hf(spec: dict, root: Path, sha256: str | None, progress: bool, name: str | None, validate=None,
              force: bool = False) -> Path:
    repo, filename, revision = spec["repo"], spec["filename"], spec.get("revision") or "main"
    what = f"{filename} from the Hub repo {repo} (revision {revision})"
    offline = _offline()
    quiet = {} if progress or not _HF_TQDM_CLASS else {"tqdm_class": _SilentTqdm}
    try:
        path = huggingface_hub.hf_hub_download(
            repo, filename, revision=revision, cache_dir=root, local_files_only=offline,
            force_download=force and not offline,
            # HF_ENDPOINT is read here because huggingface_hub reads it once, at import
            endpoint=os.environ.get("HF_ENDPOINT"), **quiet)
    except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError, so it must come first
        if offline or isinstance(e.__cause__, OfflineModeIsEnabled):
            raise _offline_error(what, root, name) from e
        if isinstance(e.__cause__, FileMetadataError):  # something answered, but it is not a Hub
            raise DownloadError(f"cannot download {what}: {e.__cause__}") from e
        endpoint = os.environ.get("HF_ENDPOINT") or huggingface_hub.constants.ENDPOINT
        raise _unreachable(endpoint, None, e.__cause__) from e
    except GatedRepoError as e:
        raise DownloadError(f"{repo} is gated or private: accept its terms on the Hub and log in "
                            f"(`hf auth login` or HF_TOKEN) to download {filename}") from e
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise _not_found(what, getattr(getattr(e, "response", None), "url", repo), name) from e
    except Exception as e:  # HTTP errors and transport errors of whichever client this huggingface_hub uses
        raise DownloadError(f"downloading {what} failed: {type(e).__name__}: {e}") from e
    path = Path(path)
    if force:
        _sidecar(path).unlink(missing_ok=True)  # the digest recorded for the copy that was just replaced
    if validate and not _sidecar(path).is_file():  # first time this file is seen: check what it is
        _validated(path, validate, what, name)
    return _verified(path, sha256, name)


class _SilentTqdm(tqdm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "disable": True})


# huggingface_hub < 1.0 has no per-call tqdm_class; there progress=False only silences our own bars
_HF_TQDM_CLASS = "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters


# --- plain URLs (and Google Drive) -----------------------------------------------------------------------------

def _fetch_url(url: str, final: Path, sha256: str | None, progress: bool, name: str | None, resolve=None,
               validate=None, force: bool = False) -> Path:
    if force and not _offline():
        forget(final)
    if final.exists():
        return _verified(final, sha256, name)
    if _offline():
        raise _offline_error(f"{final.name} from {url}", final, name)
    # two processes (e.g. DDP ranks calling mimzoo.load at once) must not append to the same .part;
    # the lock lives beside the per-URL folders (like huggingface_hub's .locks) so those hold only real files
    locks = final.parent.parent / ".locks"
    for folder in (final.parent, locks):
        folder.mkdir(parents=True, exist_ok=True)
    with FileLock(locks / f"{final.parent.name}.lock"):
        if final.exists():  # another process finished it while we waited
            return _verified(final, sha256, name)
        part = final.with_name(final.name + ".part")
        _download(url, part, progress, final.name, name, resolve)
        actual = sha256_file(part)
        if sha256 and actual != sha256.lower():
            part.unlink()
            raise _checksum_error(final, sha256.lower(), actual, name,
                                  "the downloaded file does not match the sha256 pinned in the registry "
                                  "(the upstream file may have been replaced)")
        if validate:
            _validated(part, validate, f"{final.name} from {url}", name)
        # sidecar first: a crash before the rename leaves no final file, and a new download rewrites the sidecar
        _write_atomic(_sidecar(final), f"{actual}  {final.name}\n")
        os.replace(part, final)
    return final


def _download(url: str, part: Path, progress: bool, label: str, name: str | None, resolve) -> None:
    """Complete `part` from `url`, resuming what is already there."""
    for _ in range(2):  # a second round only after the server rejected a stale .part
        have = part.stat().st_size if part.exists() else 0
        resp = _open(url, have, part, name)
        if resolve:
            resp = resolve(resp, lambda u, have=have: _open(u, have, part, name))
        with resp:
            if resp.status == 416:  # nothing left to send: the .part is complete, or it is not this file
                if _content_range(resp.headers.get("Content-Range", ""))[2] == have:
                    return
                part.unlink()
                continue
            start, _, total = _content_range(resp.headers.get("Content-Range", ""))
            if resp.status == 206 and start == have:
                mode = "ab"
            elif resp.status == 206:  # a range we did not ask for
                part.unlink()
                continue
            else:  # 200: the server ignored Range, so the body is the whole file
                have, mode, total = 0, "wb", _int(resp.headers.get("Content-Length"))
            if resp.headers.get_content_type() == "text/html" and not label.lower().endswith((".html", ".htm")):
                # a login wall, an error page or a captive portal answering 200: never a checkpoint
                raise DownloadError(f"{url} answered with an HTML page instead of {label} (a login, error or "
                                    f"quota page); nothing was saved. Open the URL in a browser to see why, or "
                                    f"download the file by hand and pass its path to mimzoo.load")
            try:
                with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                 unit_divisor=1024, desc=label, disable=None if progress else True,
                                                 leave=False) as bar:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise _interrupted(url, part, total, name, e) from e
        if total is not None and part.stat().st_size != total:
            # http.client returns a short body without an error when the peer closes early
            raise _interrupted(url, part, total, name, None)
        return
    raise DownloadError(f"{url} keeps rejecting the resume of {part}; delete it and try again")


def _open(url: str, have: int, part: Path, name: str | None):
    headers = {"User-Agent": "mimzoo"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except HTTPError as e:
        if e.code == 416 and have:
            return e  # an HTTPError is also the response; _download decides what the .part is worth
        e.close()  # it holds the connection, and it stays alive as the __cause__ of our error
        if e.code in (404, 410):
            raise _not_found(part.name.removesuffix(".part"), url, name) from e
        raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from e
    except (URLError, OSError, http.client.HTTPException) as e:
        raise _unreachable(url, part, getattr(e, "reason", e)) from e


def _gdrive_confirm(resp, open_url):
    """Drive answers large files with an HTML "virus scan warning" page whose form leads to the file."""
    if resp.status != 200 or resp.headers.get_content_type() != "text/html":
        return resp
    with resp:
        page = resp.read().decode("utf-8", "replace")
    form = _FormParser()
    form.feed(page)
    if form.action is None:
        title = re.search(r"<title>(.*?)</title>", page, re.S | re.I)
        raise DownloadError(f"Google Drive answered {resp.url} with a page instead of the file "
                            f"({title.group(1).strip() if title else 'no title'}); the file may be private, "
                            f"deleted or over its download quota")
    target = urllib.parse.urljoin(resp.url, form.action)
    return open_url(f"{target}?{urllib.parse.urlencode(form.fields)}")


class _FormParser(html.parser.HTMLParser):
    """The first <form>'s action and hidden inputs."""

    def __init__(self):
        super().__init__()
        self.action, self.fields, self._done = None, {}, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = a.get("action") or ""
        elif tag == "input" and self.action is not None and not self._done and a.get("type") == "hidden" \
                and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag):
        self._done |= tag == "form"


# --- verification ----------------------------------------------------------------------------------------------

def _verified(path: Path, sha256: str | None, name: str | None) -> Path:
    sidecar = _sidecar(path)
    recorded = (sidecar.read_text().split() or [None])[0] if sidecar.is_file() else None
    expected = (sha256 or recorded or "").lower()
    actual = sha256_file(path)
    if expected and actual != expected:
        why = ("it does not match the sha256 pinned in the registry" if sha256 else
               f"it changed on disk since it was downloaded (digest recorded in {sidecar})")
        raise _checksum_error(path, expected, actual, name, why)
    if recorded != actual:  # first verification, or the registry pinned a new digest that the file matches
        try:
            _write_atomic(sidecar, f"{actual}  {path.name}\n")
        except OSError:  # a read-only copied cache still serves its files, just without a recorded digest
            pass
    return path


def _validated(path: Path, validate, what: str, name: str | None) -> None:
    """Run the caller's check on a fresh download; a file that fails it is deleted, never cached."""
    try:
        validate(path)
    except Error as e:
        for p in {path, path.resolve()}:
            p.unlink(missing_ok=True)
        again = f"`mimzoo download {name} --force`" if name else "the download"
        raise DownloadError(f"the download of {what} is not a usable file: {e}. It was deleted; run {again} "
                            f"again, and if it fails the same way the upstream file is not what the registry "
                            f"expects") from e


def forget(path: Path) -> None:
    """Drop a cached file, its recorded digest and any partial download of it."""
    for p in (path, _sidecar(path), path.with_name(path.name + ".part")):
        p.unlink(missing_ok=True)


def _checksum_error(path: Path, expected: str, actual: str, name: str | None, why: str) -> ChecksumError:
    # a bad file must not be picked up by the next call: drop it (for the HF cache: the link and its blob)
    removed = True
    for p in {path, path.resolve(), _sidecar(path)}:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            removed = False
    again = f"run `mimzoo download {name}` again" if name else "fetch it again"
    fix = f"It was deleted; {again}." if removed else f"Delete {path} and {again}."
    return ChecksumError(f"sha256 mismatch for {path}{f' ({name})' if name else ''}: expected {expected}, "
                         f"got {actual}; {why}. {fix}")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


# --- errors and small helpers ----------------------------------------------------------------------------------

def _offline_error(what: str, where: Path, name: str | None) -> OfflineError:
    cmd = f"`mimzoo download {name}`" if name else "this download"
    return OfflineError(f"{what} is not in the cache ({where}) and HF_HUB_OFFLINE is set, so nothing is downloaded. "
                        f"Run {cmd} on a machine with network and copy the cache folder here (MIMZOO_CACHE or "
                        f"cache_dir= can point at it), or unset HF_HUB_OFFLINE.")


def _not_found(what: str, where: str, name: str | None) -> DownloadError:
    return DownloadError(f"{what} was not found (404 at {where}): the checkpoint may have moved or been removed "
                         f"upstream. If you have the file, pass its local path to mimzoo.load(...) instead"
                         f"{f' of {name!r}' if name else ''}.")


def _unreachable(url: str, part: Path | None, reason) -> DownloadError:
    host = urllib.parse.urlparse(url).netloc or url
    size = part.stat().st_size if part is not None and part.exists() else 0
    kept = (f" The partial download ({size} bytes, {part}) is kept and resumes on the next try." if size else "")
    return DownloadError(f"cannot reach {host}: the host is unreachable ({reason}).{kept} Check the network or "
                         f"proxy; to use only files already in the cache, set HF_HUB_OFFLINE=1.")


def _interrupted(url: str, part: Path, total: int | None, name: str | None, reason) -> DownloadError:
    size = part.stat().st_size if part.exists() else 0
    again = f"`mimzoo download {name}`" if name else "the same fetch"
    return DownloadError(f"the download of {url} was interrupted after {size} of {total or '?'} bytes"
                         f"{f' ({reason})' if reason else ''}. The partial file {part} is kept; run {again} again "
                         f"to resume it.")


def _offline() -> bool:
    # read per call: huggingface_hub reads HF_HUB_OFFLINE only at import
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """'bytes 10-99/100' -> (10, 99, 100); 'bytes */100' -> (None, None, 100)."""
    m = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", value.strip())
    return tuple(_int(g) for g in m.groups()) if m else (None, None, None)


def _int(value) -> int | None:
    return int(value) if value and str(value).isdigit() else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
