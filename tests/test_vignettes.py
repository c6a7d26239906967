"""The Python vignette is executed, block by block, so it cannot rot."""

import os
import re
from pathlib import Path

import pytest

VIGNETTE = Path(__file__).resolve().parents[1] / "vignettes" / "schash_scanpy.md"


def test_python_vignette_runs(tmp_path, monkeypatch):
    pytest.importorskip("scanpy")
    blocks = re.findall(r"```python\n(.*?)```", VIGNETTE.read_text(), flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").mkdir()
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(VIGNETTE), "exec"), namespace)
    for name in ["python_composition.png", "python_saliency.png", "python_confusion.png"]:
        assert os.path.getsize(tmp_path / "figures" / name) > 5000
    assert namespace["accuracy"] > 0.75
