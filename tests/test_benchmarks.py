"""The prepared GPU suite runs end to end (its tiny dry run on the CPU) and writes its JSON and table: GPU time is
scarce, so a broken entry must show here, not on the GPU machine."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.parametrize("only", ["CroCo", "k-NN", "JPEG"])
def test_gpu_suite_dry_run_writes_its_rows(tmp_path, only):
    import gpu_suite

    assert gpu_suite.main(["--tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--only", only,
                           "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu_suite.json").read_text())["rows"]
    assert len(rows) == 1 and only in rows[0]["entry"] and "error" not in rows[0], rows
    assert rows[0].get("images_per_s") or rows[0].get("queries_per_s") or rows[0].get("end_to_end_images_per_s")
    assert rows[0]["entry"] in (tmp_path / "gpu_suite.md").read_text()


def test_every_entry_has_a_name_and_the_help_documents_the_run(capsys):
    import gpu_suite

    names = [name for name, _ in gpu_suite.entries(tiny=True)]
    assert len(names) == len(set(names)) == 14
    with pytest.raises(SystemExit):
        gpu_suite.main(["--help"])
    assert "under\n8 minutes" in capsys.readouterr().out
