"""mimzoo.download against real HTTP servers on 127.0.0.1 (tests/servers.py); nothing here leaves the machine."""
import hashlib
import os
import time

import huggingface_hub.constants
import pytest

from mimzoo import download
from mimzoo.download import ChecksumError, DownloadError, OfflineError, fetch_source

from servers import FileServer, HubServer, server_down_url

REPO, FILE = "acme/mae-tiny", "mae_tiny.pth"
DATA = os.urandom(300_000)  # several read chunks of urllib/httpx, so progress and resume have something to do
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def hub(monkeypatch):
    with HubServer({(REPO, FILE): DATA, (REPO, "config.json"): b'{"depth": 2}'}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def host():
    with FileServer({"/ckpt/mae_tiny.pth": DATA}) as server:
        yield server


def hf(revision="v1.0", filename=FILE, repo=REPO):
    return {"hf": {"repo": repo, "filename": filename, "revision": revision}}


def url_final(cache, url):
    return cache / "mimzoo-url" / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]


def test_cache_dir_precedence(monkeypatch, tmp_path):
    """mimzoo's own cache is never inside the hub cache, where `hf cache scan` would report its folders."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("MIMZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "mimzoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert download.cache_dir() == download.Path("~/.cache/mimzoo").expanduser()
    monkeypatch.setenv("MIMZOO_CACHE", str(tmp_path / "mz"))
    assert download.cache_dir() == tmp_path / "mz"
    assert download.cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_hub_download_by_repo_file_revision(hub, tmp_path):
    path = fetch_source(hf("v1.0"), cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == DATA
    commit = HubServer.commit(REPO, "v1.0")
    assert path == tmp_path / "models--acme--mae-tiny" / "snapshots" / commit / FILE
    assert path.resolve().name == DIGEST  # the blob is named by the ETag
    assert hub.calls == [("HEAD", f"/{REPO}/resolve/v1.0/{FILE}"), ("GET", f"/{REPO}/resolve/v1.0/{FILE}")]
    assert (path.parent / f"{FILE}.sha256").read_text().split()[0] == DIGEST


def test_hub_second_fetch_is_served_from_cache(hub, tmp_path):
    first = fetch_source(hf(), cache_dir=tmp_path, progress=False)
    hub.log.clear()
    assert fetch_source(hf(), cache_dir=tmp_path, progress=False) == first
    assert hub.calls == [("HEAD", f"/{REPO}/resolve/v1.0/{FILE}")]  # revalidation only, no second GET


def test_hub_offline_serves_cache_without_any_request(hub, tmp_path, monkeypatch):
    first = fetch_source(hf(), cache_dir=tmp_path, progress=False)
    hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import on purpose: read per call
    assert fetch_source(hf(), cache_dir=tmp_path).read_bytes() == DATA == first.read_bytes()
    assert hub.log == []


def test_offline_miss_says_what_is_missing_and_what_to_do(hub, host, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    with pytest.raises(OfflineError) as err:
        fetch_source(hf(), cache_dir=tmp_path, name="mae_tiny")
    msg = str(err.value)
    assert REPO in msg and FILE in msg and "`mimzoo download mae_tiny`" in msg and "HF_HUB_OFFLINE" in msg
    assert "copy the cache" in msg
    with pytest.raises(OfflineError, match="mae_tiny.pth"):
        fetch_source({"url": f"{host.url}/ckpt/mae_tiny.pth"}, cache_dir=tmp_path)
    assert hub.log == [] and host.log == []


def test_url_download_without_progress(host, tmp_path, capsys, monkeypatch):
    url = f"{host.url}/ckpt/mae_tiny.pth"
    path = fetch_source({"url": url}, cache_dir=tmp_path, progress=False)
    assert path == url_final(tmp_path, url) and path.read_bytes() == DATA
    assert sorted(p.name for p in path.parent.iterdir()) == ["mae_tiny.pth", "mae_tiny.pth.sha256"]
    assert (path.parent / "mae_tiny.pth.sha256").read_text().split()[0] == DIGEST  # recorded at first download
    assert host.log == [("GET", "/ckpt/mae_tiny.pth", None, 200)]
    assert capsys.readouterr().err == ""
    # cached, online or offline: no second request
    assert fetch_source({"url": url}, cache_dir=tmp_path, progress=False) == path
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert fetch_source({"url": url}, cache_dir=tmp_path, progress=False) == path
    assert len(host.log) == 1


def test_pinned_sha256(host, tmp_path):
    url = f"{host.url}/ckpt/mae_tiny.pth"
    assert fetch_source({"url": url}, sha256=DIGEST.upper(), cache_dir=tmp_path, progress=False).read_bytes() == DATA


def test_pinned_sha256_mismatch_leaves_no_file(host, tmp_path):
    url, wrong = f"{host.url}/ckpt/mae_tiny.pth", "0" * 64
    with pytest.raises(ChecksumError) as err:
        fetch_source({"url": url}, sha256=wrong, cache_dir=tmp_path, progress=False, name="mae_tiny")
    msg = str(err.value)
    assert wrong in msg and DIGEST in msg and "mae_tiny.pth" in msg and "`mimzoo download mae_tiny` again" in msg
    final = url_final(tmp_path, url)
    assert not final.exists() and not final.with_name(final.name + ".part").exists()
    assert not final.with_name(final.name + ".sha256").exists()


def test_corrupted_cached_file_is_detected_then_redownloaded(host, tmp_path):
    url = f"{host.url}/ckpt/mae_tiny.pth"
    path = fetch_source({"url": url}, cache_dir=tmp_path, progress=False)
    path.write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 1]))  # e.g. a disk error (a changed byte: DATA may end in 0)
    with pytest.raises(ChecksumError, match="changed on disk") as err:
        fetch_source({"url": url}, cache_dir=tmp_path, progress=False, name="mae_tiny")
    assert DIGEST in str(err.value) and "`mimzoo download mae_tiny`" in str(err.value)
    assert not path.exists()
    assert fetch_source({"url": url}, cache_dir=tmp_path, progress=False).read_bytes() == DATA
    assert [r.method for r in host.log] == ["GET", "GET"]


def test_corrupted_hub_blob_is_detected_then_redownloaded(hub, tmp_path):
    path = fetch_source(hf(), cache_dir=tmp_path, progress=False)
    blob = path.resolve()
    blob.write_bytes(b"not a checkpoint")
    with pytest.raises(ChecksumError, match="changed on disk"):
        fetch_source(hf(), cache_dir=tmp_path, progress=False)
    assert not blob.exists()  # removing only the snapshot link would let huggingface_hub relink the bad blob
    hub.log.clear()
    assert fetch_source(hf(), cache_dir=tmp_path, progress=False).read_bytes() == DATA
    assert [m for m, _ in hub.calls] == ["HEAD", "GET"]


def test_interrupted_download_keeps_part_and_resumes_with_range(host, tmp_path):
    url = f"{host.url}/ckpt/mae_tiny.pth"
    final = url_final(tmp_path, url)
    part = final.with_name(final.name + ".part")
    host.truncate_after = 100_000
    with pytest.raises(DownloadError, match="interrupted after 100000 of 300000 bytes") as err:
        fetch_source({"url": url}, cache_dir=tmp_path, progress=False, name="mae_tiny")
    assert "resume" in str(err.value) and str(part) in str(err.value)
    assert not final.exists() and part.stat().st_size == 100_000
    host.truncate_after = None
    assert fetch_source({"url": url}, cache_dir=tmp_path, progress=False).read_bytes() == DATA
    assert host.log[-1] == ("GET", "/ckpt/mae_tiny.pth", "bytes=100000-", 206)
    assert not part.exists()


@pytest.mark.parametrize("leftover", [DATA, DATA + b"junk"], ids=["complete-part", "oversized-part"])
def test_range_not_satisfiable(host, tmp_path, leftover):
    """416: a .part that is already whole (crash before the rename) is kept; one that is not this file restarts."""
    url = f"{host.url}/ckpt/mae_tiny.pth"
    final = url_final(tmp_path, url)
    final.parent.mkdir(parents=True)
    final.with_name(final.name + ".part").write_bytes(leftover)
    assert fetch_source({"url": url}, cache_dir=tmp_path, progress=False).read_bytes() == DATA
    assert host.log[0][2:] == (f"bytes={len(leftover)}-", 416)
    assert [r.status for r in host.log[1:]] == ([] if leftover == DATA else [200])


@pytest.mark.parametrize("repo,filename", [(REPO, "missing.pth"), ("acme/nope", FILE)], ids=["file", "repo"])
def test_hub_404_names_the_file(hub, tmp_path, repo, filename):
    with pytest.raises(DownloadError) as err:
        fetch_source(hf(repo=repo, filename=filename), cache_dir=tmp_path, progress=False, name="mae_tiny")
    assert type(err.value) is DownloadError
    msg = str(err.value)
    assert filename in msg and repo in msg and "may have moved" in msg and "mimzoo.load" in msg


def test_url_404_names_the_file(host, tmp_path):
    host.fail_paths.add("/ckpt/mae_tiny.pth")
    with pytest.raises(DownloadError, match=r"mae_tiny\.pth.*may have moved") as err:
        fetch_source({"url": f"{host.url}/ckpt/mae_tiny.pth"}, cache_dir=tmp_path, progress=False)
    assert type(err.value) is DownloadError
    assert not any(url_final(tmp_path, f"{host.url}/ckpt/mae_tiny.pth").parent.iterdir())


def test_url_server_down_keeps_the_partial_download(tmp_path):
    url = f"{server_down_url()}/ckpt/mae_tiny.pth"
    part = url_final(tmp_path, url).with_name("mae_tiny.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:1000])
    with pytest.raises(DownloadError, match="unreachable") as err:
        fetch_source({"url": url}, cache_dir=tmp_path, progress=False)
    assert "1000 bytes" in str(err.value) and "resumes" in str(err.value) and "HF_HUB_OFFLINE=1" in str(err.value)
    assert part.read_bytes() == DATA[:1000]


def test_hub_server_down(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server_down_url())
    sleeps = []
    monkeypatch.setattr(time, "sleep", sleeps.append)  # huggingface_hub backs off 1+2+4+8+8 s before giving up
    with pytest.raises(DownloadError, match="unreachable.*HF_HUB_OFFLINE=1") as err:
        fetch_source(hf(), cache_dir=tmp_path, progress=False)
    assert type(err.value) is DownloadError


@pytest.mark.parametrize("large", [True, False], ids=["virus-scan-warning", "direct"])
def test_gdrive(tmp_path, monkeypatch, large):
    with FileServer(gdrive={"1AbC": DATA}, large={"1AbC"} if large else set()) as drive:
        monkeypatch.setenv("MIMZOO_GDRIVE_ENDPOINT", drive.url)
        path = fetch_source({"gdrive": {"id": "1AbC", "filename": "mimic.pth"}}, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == DATA and path.name == "mimic.pth"
    assert path.parent.name == hashlib.sha256(b"gdrive:1AbC").hexdigest()[:16]
    first = ("GET", "/download?id=1AbC&export=download")
    if large:
        (uuid,) = drive.issued_uuids
        assert drive.calls == [first, ("GET", f"/download?id=1AbC&export=download&confirm=t&uuid={uuid}")]
    else:
        assert drive.calls == [first]


def test_source_must_be_exactly_one_kind(tmp_path):
    for bad in ({}, {"url": "http://x/a", "gdrive": {"id": "1"}}, {"s3": "bucket/key"}):
        with pytest.raises(ValueError, match="exactly one of"):
            fetch_source(bad, cache_dir=tmp_path)


def _same_size_corruption(path):
    """Change the bytes but neither the size nor the mtime: what only a hash can see."""
    stat = path.stat()
    path.write_bytes(bytes([path.read_bytes()[0] ^ 1]) + path.read_bytes()[1:])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_verified_file_is_trusted_until_its_size_or_mtime_changes(host, tmp_path):
    """The sidecar records size and mtime with the digest: an unchanged file is not hashed again on every load
    (a ViT-H is 2.5 GB), a touched one is, and `verify=True` (`mimzoo download --verify`) hashes anyway."""
    url = f"{host.url}/ckpt/mae_tiny.pth"
    path = fetch_source({"url": url}, cache_dir=tmp_path, progress=False)
    sidecar = path.with_name(path.name + ".sha256").read_text()
    assert f"size={len(DATA)} mtime_ns={path.stat().st_mtime_ns}" in sidecar
    time.sleep(0.01)  # the stamp is trusted only once the file is older than its sidecar (racy-clean rule)
    fetch_source({"url": url}, cache_dir=tmp_path, progress=False)
    _same_size_corruption(path)
    # size and mtime as recorded: trusted without hashing, so the silent corruption is not seen...
    assert fetch_source({"url": url}, cache_dir=tmp_path, progress=False) == path
    # ...until it is verified on demand, which deletes the bad copy
    with pytest.raises(ChecksumError, match="changed on disk"):
        fetch_source({"url": url}, cache_dir=tmp_path, progress=False, verify=True)
    assert not path.exists()
    path = fetch_source({"url": url}, cache_dir=tmp_path, progress=False)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched (same bytes): hashed, then re-stamped
    assert fetch_source({"url": url}, cache_dir=tmp_path, progress=False).read_bytes() == DATA
    assert f"mtime_ns={path.stat().st_mtime_ns}" in path.with_name(path.name + ".sha256").read_text()
    path.write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 2]))  # a real write moves the mtime: caught without verify
    with pytest.raises(ChecksumError):
        fetch_source({"url": url}, cache_dir=tmp_path, progress=False)


def test_old_sidecars_without_a_stamp_are_hashed_once_then_stamped(host, tmp_path):
    url = f"{host.url}/ckpt/mae_tiny.pth"
    path = fetch_source({"url": url}, cache_dir=tmp_path, progress=False)
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_text(f"{DIGEST}  {path.name}\n")  # what earlier versions wrote (and `sha256sum` reads)
    _same_size_corruption(path)
    with pytest.raises(ChecksumError):  # no stamp: hashed
        fetch_source({"url": url}, cache_dir=tmp_path, progress=False)


def test_url_files_cached_in_the_hub_cache_by_older_versions_are_moved_out(host, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("MIMZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    url = f"{host.url}/ckpt/mae_tiny.pth"
    old = url_final(tmp_path / "hf", url)
    old.parent.mkdir(parents=True)
    old.write_bytes(DATA)
    old.with_name(old.name + ".sha256").write_text(f"{DIGEST}  {old.name}\n")
    path = fetch_source({"url": url}, progress=False)
    assert path == url_final(tmp_path / "xdg" / "mimzoo", url) and path.read_bytes() == DATA
    assert host.log == [] and not (tmp_path / "hf" / "mimzoo-url").exists()  # moved, nothing downloaded


def test_download_verify_from_the_cli(tmp_path, monkeypatch, capsys):
    import torch
    from safetensors.torch import save

    from mimzoo.cli import main

    weights = save({"w": torch.arange(1000.0)})
    with HubServer({(REPO, "config.json"): b'{"depth": 2}', (REPO, "model.safetensors"): weights}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert main(["download", f"hf-hub:{REPO}", "--cache-dir", str(tmp_path), "--quiet"]) == 0
        path = next((tmp_path / "models--acme--mae-tiny" / "snapshots").glob("*/model.safetensors"))
        time.sleep(0.01)
        _same_size_corruption(path.resolve())
        assert main(["download", f"hf-hub:{REPO}", "--cache-dir", str(tmp_path), "--quiet"]) == 0  # trusted
        capsys.readouterr()
        assert main(["download", f"hf-hub:{REPO}", "--cache-dir", str(tmp_path), "--verify", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed on disk" in err[0] and "Traceback" not in err[0]
