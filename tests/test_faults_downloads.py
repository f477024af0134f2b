"""Fault matrix, downloads and files on disk: what no published digest can vouch for is checked for what it is
(an HTML page or a cut body never becomes the cached checkpoint), a bad cached copy names itself and the fix,
`mimzoo download --force` replaces it, and every file mimzoo writes gets the user's umask."""
import os
import stat

import pytest
import torch
import yaml

import mimzoo
from mimzoo.checkpoint import CheckpointReadError, atomic_path, check_complete, write_safetensors
from mimzoo.cli import main as cli
from mimzoo.download import DownloadError, cache_dir

from servers import FileServer


@pytest.fixture(scope="module")
def weights(parity_dir):
    return (parity_dir / "mae_pretrain/checkpoint_released_encoder.pth").read_bytes()


def zoo_entry(tmp_path, monkeypatch, url):
    path = tmp_path / "extra.yaml"
    path.write_text(yaml.safe_dump({"models": {"tiny_mae": {
        "method": "mae", "format": "mae", "source": {"url": url}}}}))
    monkeypatch.setenv("MIMZOO_REGISTRY", str(path))


def cached_files():
    return sorted(p.name for p in cache_dir().rglob("*") if p.is_file() and ".locks" not in p.parts)


def test_an_html_page_served_with_200_is_refused_and_nothing_is_cached(tmp_path, monkeypatch, weights):
    with FileServer({"/tiny.pth": weights}) as host:
        zoo_entry(tmp_path, monkeypatch, f"{host.url}/tiny.pth")
        host.html_paths.add("/tiny.pth")
        with pytest.raises(DownloadError, match="HTML page instead of tiny.pth"):
            mimzoo.load("tiny_mae", progress=False)
        assert cached_files() == []
        host.html_paths.clear()  # the login wall is gone: the next load downloads the real file
        assert mimzoo.load("tiny_mae", progress=False).embed_dim == 192


def test_a_body_cut_short_without_content_length_is_refused(tmp_path, monkeypatch, weights):
    with FileServer({"/tiny.pth": weights}) as host:
        zoo_entry(tmp_path, monkeypatch, f"{host.url}/tiny.pth")
        host.no_length, host.truncate_after = True, len(weights) // 2
        with pytest.raises(DownloadError, match="truncated or damaged torch archive") as err:
            mimzoo.load("tiny_mae", progress=False)
        assert "mimzoo download tiny_mae --force" in str(err.value)
        assert cached_files() == []
        host.truncate_after = None
        assert len(mimzoo.load("tiny_mae", progress=False).blocks) == 2


def test_a_bad_cached_copy_names_itself_and_download_force_replaces_it(tmp_path, monkeypatch, weights, capsys):
    with FileServer({"/tiny.pth": weights}) as host:
        zoo_entry(tmp_path, monkeypatch, f"{host.url}/tiny.pth")
        assert cli(["download", "tiny_mae", "--quiet"]) == 0
        path = capsys.readouterr().out.split(": ", 1)[1].strip()
        # a copy damaged in a way its recorded digest cannot catch: a cache written by an older mimzoo that
        # trusted whatever the first download returned (the digest was recorded from the bad bytes)
        with open(path, "r+b") as f:
            f.truncate(len(weights) // 3)
        os.remove(path + ".sha256")
        with pytest.raises(CheckpointReadError) as err:
            mimzoo.load("tiny_mae", progress=False)
        assert path in str(err.value) and "mimzoo download tiny_mae --force" in str(err.value)
        assert cli(["download", "tiny_mae", "--force", "--quiet"]) == 0
        assert [r.method for r in host.log] == ["GET", "GET"]
    assert os.path.getsize(path) == len(weights)
    assert mimzoo.load("tiny_mae", progress=False).embed_dim == 192


def test_download_force_on_a_good_copy_fetches_it_again(tmp_path, monkeypatch, weights):
    with FileServer({"/tiny.pth": weights}) as host:
        zoo_entry(tmp_path, monkeypatch, f"{host.url}/tiny.pth")
        assert cli(["download", "tiny_mae", "--quiet"]) == 0
        assert cli(["download", "tiny_mae", "--quiet"]) == 0  # cached: no request
        assert cli(["download", "tiny_mae", "--quiet", "--force"]) == 0
        assert [r.method for r in host.log] == ["GET", "GET"]


@pytest.mark.parametrize("damage", ["half", "html", "empty_zip"])
def test_check_complete_refuses_incomplete_weight_files(tmp_path, weights, damage):
    good = tmp_path / "good.pth"
    good.write_bytes(weights)
    check_complete(good)
    tensors = tmp_path / "good.safetensors"
    write_safetensors({"w": torch.arange(1000.0)}, tensors)
    check_complete(tensors)
    bad = tmp_path / "bad"
    if damage == "half":
        bad.write_bytes(tensors.read_bytes()[:-100])
        with pytest.raises(CheckpointReadError, match="truncated"):
            check_complete(bad)
        bad.write_bytes(weights[: len(weights) // 2])
    elif damage == "html":
        bad.write_bytes(b"<!DOCTYPE html><html>quota exceeded</html>")
    else:
        import zipfile

        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("readme.txt", "not a checkpoint")
    with pytest.raises(CheckpointReadError):
        check_complete(bad)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_written_atomically_get_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("{}")
        write_safetensors({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what any other program of this user would create
    finally:
        os.umask(old)
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == expected
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


class RunsCode:
    """A pickle whose __reduce__ would create a folder when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-archive", "legacy-pickle"])
def test_malicious_pickles_never_run_from_the_cli_or_a_download(tmp_path, monkeypatch, capsys, zip_format):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": RunsCode(str(target))}, evil,
               _use_new_zipfile_serialization=zip_format)
    assert cli(["convert", str(evil), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never runs code" in err and "Traceback" not in err
    with FileServer({"/evil.pth": evil.read_bytes()}) as host:
        zoo_entry(tmp_path, monkeypatch, f"{host.url}/evil.pth")
        with pytest.raises(mimzoo.Error, match="never runs code"):
            mimzoo.load("tiny_mae", progress=False)
    assert not target.exists() and not (tmp_path / "out").exists()
