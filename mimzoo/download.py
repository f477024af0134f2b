"""Fetch a checkpoint file (Hugging Face Hub, plain URL or Google Drive) into the cache and return it verified.

Hub files live in huggingface_hub's own cache; URL and Google Drive files in mimzoo's (`cache_dir()`), never inside
the hub cache, where `hf cache scan` reports foreign folders as corrupted.

Every returned file has been checked against a sha256: the pinned one when the registry has it, otherwise the one
recorded in `<file>.sha256` when the file was first downloaded (so a file that changed on disk is caught). The
sidecar also records the file's size and mtime at that check; while both are unchanged the recorded digest is
trusted instead of hashing gigabytes on every load (`verify=True`, `mimzoo download --verify`, hashes anyway). As no
upstream publishes digests, the first download is also checked for what it is: an HTML page is refused, and the
caller's `validate` (for checkpoints: a complete, readable archive) must pass before the file takes its final name.
`force=True` drops the cached copy and downloads again.
"""
from __future__ import annotations

import contextlib
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
    """mimzoo's own cache: `override`, else `$MIMZOO_CACHE`, else `$XDG_CACHE_HOME/mimzoo`, else `~/.cache/mimzoo`.
    Hub files go to huggingface_hub's cache instead, unless `override` or `$MIMZOO_CACHE` names a folder."""
    if override or os.environ.get("MIMZOO_CACHE"):
        return Path(override or os.environ["MIMZOO_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mimzoo"


def _legacy_cache() -> Path:
    """Where earlier versions put URL and Google Drive files when MIMZOO_CACHE was unset: inside the hub cache."""
    # huggingface_hub.constants is read here, not imported by name, so tests and late configuration can patch it
    return Path(huggingface_hub.constants.HF_HUB_CACHE).expanduser()


_cache_root = cache_dir  # fetch_source()'s cache_dir argument shadows the function


def fetch_source(source: dict, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, name: str | None = None, validate=None, force: bool = False,
                 verify: bool = False) -> Path:
    """A local, verified copy of `source`: {"hf": {"repo", "filename", "revision"}}, {"url": ...} or
    {"gdrive": {"id", "filename"?}}.

    Args:
        sha256: the pinned digest, when the registry has one.
        cache_dir: one folder for every kind of file (default: see `cache_dir()`).
        name: the zoo name, only to make error messages actionable.
        validate: `validate(path)` raises (an `Error`) when a freshly downloaded file is not what it should be;
            the file is then deleted, never cached.
        force: forget the cached copy (and any partial download) and download again.
        verify: hash the cached copy even when its recorded size and mtime say it is unchanged.
    """
    kinds = [k for k in ("hf", "url", "gdrive") if k in source]
    if len(kinds) != 1 or len(source) != 1:
        raise ConfigError(f"a download source is exactly one of {{'hf': {{...}}}}, {{'url': ...}}, "
                         f"{{'gdrive': {{'id': ...}}}}; got {source!r}")
    chosen = cache_dir or os.environ.get("MIMZOO_CACHE")
    if "hf" in source:
        # Hub files share huggingface_hub's cache (HF_HUB_CACHE) with every other Hub library, unless the user
        # named one folder for everything; None lets hf_hub_download pick it
        root = _cache_root(chosen) if chosen else None
        return _fetch_hf(source["hf"], root, sha256, progress, name, validate, force, verify)
    if "url" in source:
        url = source["url"]
        basename = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
        basename = "download" if basename in ("", ".", "..") else basename
        rel, resolve = Path("mimzoo-url", _key(url), basename), None
    else:
        file_id = source["gdrive"]["id"]
        base = os.environ.get("MIMZOO_GDRIVE_ENDPOINT", GDRIVE).rstrip("/")
        url = f"{base}/download?" + urllib.parse.urlencode({"id": file_id, "export": "download"})
        rel = Path("mimzoo-url", _key(f"gdrive:{file_id}"), source["gdrive"].get("filename", file_id))
        resolve = _gdrive_confirm
    final = _cache_root(chosen) / rel
    # the old default location only matters where the default applies: a chosen folder was used as is before too
    legacy = None if chosen or _legacy_cache() / rel == final else _legacy_cache() / rel
    return _fetch_url(url, final, sha256, progress, name, resolve=resolve, validate=validate, force=force,
                      legacy=legacy, verify=verify)


def verify_file(path: str | os.PathLike, *, sha256: str | None = None, name: str | None = None) -> Path:
    """Hash a cached file now and check it against `sha256` or the digest recorded beside it (what
    `mimzoo download --verify` does); a mismatch raises `ChecksumError` and deletes the file."""
    return _verified(Path(path), sha256, name, rehash=True)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- Hugging Face Hub ------------------------------------------------------------------------------------------

def _fetch_hf(spec: dict, root: Path | None, sha256: str | None, progress: bool, name: str | None, validate=None,
              force: bool = False, verify: bool = False) -> Path:
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
            raise _offline_error(what, root or _legacy_cache(), name) from e
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
    return _verified(path, sha256, name, verify)


class _SilentTqdm(tqdm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "disable": True})


# huggingface_hub < 1.0 has no per-call tqdm_class; there progress=False only silences our own bars
_HF_TQDM_CLASS = "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters


# --- plain URLs (and Google Drive) -----------------------------------------------------------------------------

def _fetch_url(url: str, final: Path, sha256: str | None, progress: bool, name: str | None, resolve=None,
               validate=None, force: bool = False, legacy: Path | None = None, verify: bool = False) -> Path:
    if force and not _offline():
        forget(final)
        if legacy is not None:
            forget(legacy)  # else the old copy would be adopted in place of the new download
    if final.exists():
        return _verified(final, sha256, name, verify)
    if legacy is not None and legacy.exists() and (adopted := _adopt(legacy, final)) is not None:
        return _verified(adopted, sha256, name, verify)
    if _offline():
        raise _offline_error(f"{final.name} from {url}", final, name)
    # two processes (e.g. DDP ranks calling mimzoo.load at once) must not append to the same .part;
    # the lock lives beside the per-URL folders (like huggingface_hub's .locks) so those hold only real files
    locks = final.parent.parent / ".locks"
    for folder in (final.parent, locks):
        folder.mkdir(parents=True, exist_ok=True)
    with FileLock(locks / f"{final.parent.name}.lock"):
        if final.exists():  # another process finished it while we waited
            return _verified(final, sha256, name, verify)
        part = final.with_name(final.name + ".part")
        _download(url, part, progress, final.name, name, resolve)
        stat = part.stat()  # before hashing: a change while hashing then shows as a changed mtime
        actual = sha256_file(part)
        if sha256 and actual != sha256.lower():
            part.unlink()
            raise _checksum_error(final, sha256.lower(), actual, name,
                                  "the downloaded file does not match the sha256 pinned in the registry "
                                  "(the upstream file may have been replaced)")
        if validate:
            _validated(part, validate, f"{final.name} from {url}", name)
        # sidecar first: a crash before the rename leaves no final file, and a new download rewrites the sidecar;
        # the rename keeps size and mtime, so the stat recorded for the .part holds for the final name
        _write_sidecar(_sidecar(final), actual, final.name, stat)
        os.replace(part, final)
    return final


def _adopt(old: Path, final: Path) -> Path | None:
    """Move a file that an older mimzoo cached inside the hub cache (see `_legacy_cache`) to `final`, with its
    sidecar, instead of downloading it again. Where it cannot be moved (another file system, a read-only cache) it
    is used where it is. None: it is gone (another process moved or deleted it)."""
    locks = final.parent.parent / ".locks"
    try:
        for folder in (final.parent, locks):
            folder.mkdir(parents=True, exist_ok=True)
        with FileLock(locks / f"{final.parent.name}.lock"):  # the lock of a download to `final`
            if final.exists():  # another process moved it while we waited
                return final
            if not old.exists():
                return None
            # sidecar first: a crash in between leaves the file at `old`, and the next call moves it after its digest
            if _sidecar(old).exists():
                os.replace(_sidecar(old), _sidecar(final))
            try:
                os.replace(old, final)
            except OSError:
                with contextlib.suppress(OSError):
                    os.replace(_sidecar(final), _sidecar(old))
                raise
    except OSError:
        return old if old.exists() else None
    # emptied folders would stay in the hub cache as foreign entries; rmdir leaves a folder that still holds files
    # (another cached file, a partial download); the lock guarded only this file's download there
    locks = old.parent.parent / ".locks"
    with contextlib.suppress(OSError):
        old.parent.rmdir()  # a folder still holding other files stays, and so do the folders above it
        (locks / f"{old.parent.name}.lock").unlink(missing_ok=True)
        for folder in (locks, old.parent.parent):
            if folder.is_dir():
                folder.rmdir()
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

def _verified(path: Path, sha256: str | None, name: str | None, rehash: bool = False) -> Path:
    sidecar = _sidecar(path)
    recorded, stamp = _read_sidecar(sidecar)
    expected = (sha256 or recorded or "").lower()
    stat = path.stat()  # of the blob, for a Hub snapshot link; taken before hashing, as in _fetch_url
    if not rehash and recorded and recorded == expected and _unchanged(stat, stamp):
        return path  # these bytes were hashed when the stamp was written, and nothing has written to them since
    actual = sha256_file(path)
    if expected and actual != expected:
        why = ("it does not match the sha256 pinned in the registry" if sha256 else
               f"it changed on disk since it was downloaded (digest recorded in {sidecar})")
        raise _checksum_error(path, expected, actual, name, why)
    try:  # also when the digest is the same: the new stamp spares the next load this hash
        _write_sidecar(sidecar, actual, path.name, stat)
    except OSError:  # a read-only copied cache still serves its files, hashed on every load
        pass
    return path


# A sidecar is `sha256sum` output (`sha256sum -c` checks it; it skips '#' lines) plus the stat of the file when that
# digest was computed:
#     <sha256>  <file name>
#     # mimzoo: size=<st_size> mtime_ns=<st_mtime_ns>
# Sidecars of older versions have only the first line: their file is hashed once more, then stamped.
_STAMP = re.compile(r"^# mimzoo: size=(\d+) mtime_ns=(-?\d+)$", re.M)


def _write_sidecar(sidecar: Path, digest: str, filename: str, stat: os.stat_result) -> None:
    _write_atomic(sidecar, f"{digest}  {filename}\n# mimzoo: size={stat.st_size} mtime_ns={stat.st_mtime_ns}\n")


def _read_sidecar(sidecar: Path) -> tuple[str | None, tuple[int, int, int] | None]:
    """(recorded digest, (size, mtime_ns, the sidecar's own mtime_ns) or None); (None, None) without a sidecar."""
    if not sidecar.is_file():
        return None, None
    text = sidecar.read_text()
    digest = (text.split() or [None])[0]
    m = _STAMP.search(text)
    stamp = (int(m.group(1)), int(m.group(2)), sidecar.stat().st_mtime_ns) if m else None
    return (digest.lower() if digest else None), stamp


def _unchanged(stat: os.stat_result, stamp: tuple[int, int, int] | None) -> bool:
    if stamp is None:
        return False
    size, mtime_ns, written_ns = stamp
    # mtimes advance in clock ticks (a few ms, or 1-2 s on some file systems): a write in the tick in which the
    # stamp was taken would keep the recorded mtime, so a file as new as its sidecar is hashed again (git's "racy
    # clean" rule); the re-written sidecar is then newer and the next load trusts it
    return stat.st_size == size and stat.st_mtime_ns == mtime_ns and mtime_ns < written_ns


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
    # a plain open() gives the file the mode of any file the user creates (umask); the pid keeps two processes
    # (DDP ranks) from writing the same temporary file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name: a crash leaves the old sidecar or the new
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
