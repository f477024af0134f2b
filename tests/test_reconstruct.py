"""`mimzoo reconstruct` on real photos (scikit-image's, written as PNG and JPEG) with tiny saved pretrainers: the
grid's layout, the masked fraction, the visible patches passed through untouched, seeded masks, the two-view
reference, and one-line errors."""
import logging

import numpy as np
import pytest
from PIL import Image

from mimzoo.cli import main

from tiny import tiny

SIZE, PATCH, TILE = 64, 8, 128  # --size 64 on the 8 px patches: 8 x 8 patches; tiles under 128 px are doubled


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from skimage import data

    root = tmp_path_factory.mktemp("reconstruct")
    Image.fromarray(data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(data.coffee()).save(root / "coffee.jpg", quality=90)  # 400 x 600: resized and cropped
    for method in ("mae", "croco", "siameseim"):
        tiny(method).save_pretrained(root / method)
    return root


def panels(path, columns: int) -> np.ndarray:
    """(rows, columns, TILE, TILE, 3) int16 tiles of a make_grid picture (2 px padding)."""
    grid = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    rows = (grid.shape[0] - 2) // (TILE + 2)
    assert grid.shape == (2 + rows * (TILE + 2), 2 + columns * (TILE + 2), 3)
    return np.stack([np.stack([grid[2 + r * (TILE + 2):][:TILE, 2 + c * (TILE + 2):][:, :TILE]
                               for c in range(columns)]) for r in range(rows)])


def per_patch(tile: np.ndarray) -> np.ndarray:
    """(8, 8, 16, 16, 3): the tile cut into its (enlarged) patches."""
    k = TILE // (SIZE // PATCH)
    return tile.reshape(SIZE // PATCH, k, SIZE // PATCH, k, 3).swapaxes(1, 2)


def expected_input(path) -> np.ndarray:
    """What the model should see, by PIL alone: shorter side to SIZE (bicubic), centre crop, enlarged to TILE."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    nw, nh = round(w * SIZE / min(w, h)), round(h * SIZE / min(w, h))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
    image = image.crop((left, top, left + SIZE, top + SIZE)).resize((TILE, TILE), Image.Resampling.NEAREST)
    return np.asarray(image, dtype=np.int16)


def test_grid_shows_the_masked_fraction_and_keeps_the_visible_patches(files, tmp_path, capsys):
    photos = [files / "astronaut.png", files / "coffee.jpg"]

    def run(name, *extra):
        out = tmp_path / name
        assert main(["reconstruct", *map(str, photos), "--model", str(files / "mae"), "--out", str(out),
                     "--mask-ratio", "0.6", "--size", str(SIZE), *extra]) == 0
        return out

    out = run("grid.png")
    assert str(out) in capsys.readouterr().out
    tiles = panels(out, 4)  # original | masked | reconstruction | pasted
    assert tiles.shape[0] == 2
    n = (SIZE // PATCH) ** 2
    for row, photo in zip(tiles, photos):
        original, masked, recon, pasted = (per_patch(t) for t in row)
        assert np.abs(row[0] - expected_input(photo)).max() <= 1  # the input, up to uint8 rounding
        removed = (masked != original).any(axis=(2, 3, 4))
        assert removed.sum() == n - int(n * (1 - 0.6))  # MAE's rule: int(N (1 - ratio)) patches kept
        assert np.abs(pasted[~removed] - original[~removed]).max() <= 1  # visible patches pass through untouched
        assert np.abs(pasted[removed] - recon[removed]).max() <= 1  # the reconstruction fills the rest
        assert (pasted[removed] != original[removed]).any()

    pixels = [np.asarray(Image.open(p)) for p in (out, run("again.png"), run("other.png", "--seed", "1"))]
    assert np.array_equal(pixels[0], pixels[1])  # same seed, same masks
    assert not np.array_equal(pixels[0], pixels[2])
    assert Image.open(run("grid.jpg")).format == "JPEG"  # the suffix decides the format


def test_two_view_pretrainer_takes_a_reference(files, tmp_path, capsys, caplog):
    out = tmp_path / "croco.png"
    argv = ["reconstruct", str(files / "astronaut.png"), "--model", str(files / "croco"), "--size", str(SIZE)]
    with caplog.at_level(logging.INFO, logger="mimzoo"):
        assert main([*argv, "--out", str(out), "--reference", str(files / "coffee.jpg")]) == 0
    assert any("CroCo: backbone, decoder from" in r.getMessage() for r in caplog.records)  # the load report
    reference, original = panels(out, 5)[0, :2]  # reference | original | masked | reconstruction | pasted
    assert np.abs(reference - expected_input(files / "coffee.jpg")).max() <= 1
    assert np.abs(original - expected_input(files / "astronaut.png")).max() <= 1
    capsys.readouterr()

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reference" in err and "CroCo" in err


@pytest.mark.parametrize("case", ["missing image", "not an image", "mask ratio"])
def test_mistakes_are_one_line(files, tmp_path, capsys, case):
    (tmp_path / "notes.png").write_text("not a picture")
    image, extra = {"missing image": (tmp_path / "nope.png", []), "not an image": (tmp_path / "notes.png", []),
                    "mask ratio": (files / "astronaut.png", ["--mask-ratio", "1.0"])}[case]
    assert main(["reconstruct", str(image), "--model", str(files / "mae"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mimzoo reconstruct: error: ")
    assert (str(image) in err) if case != "mask ratio" else ("mask ratio" in err)


def test_a_method_without_pixels_says_what_it_predicts(files, capsys, caplog):
    """Checked from the file before the model is built: the error is all the user sees (no load report)."""
    with caplog.at_level(logging.INFO, logger="mimzoo"):
        assert main(["reconstruct", str(files / "astronaut.png"), "--model", str(files / "siameseim")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SiameseIM predicts the momentum encoder's features" in err
    assert not caplog.records
