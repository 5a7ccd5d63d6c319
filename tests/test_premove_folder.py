"""A model folder written before the layout move (issue 38) still loads and predicts the same.

``tests/data/premove-model/`` was written by commit 8ae9608 with ``tests/data/make_premove_model.py``,
which also recorded that code's float32 probabilities for a few texts. The GPT-2 tokenizer's 3.5 MB
``tokenizer.json`` is not committed: it is copied from the shared tokenizer folder, whose bytes the
generator recorded as identical.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def premove_record() -> dict:
    return json.loads((DATA / "premove-probabilities.json").read_text())


@pytest.fixture(scope="module")
def premove_folder(premove_record: dict, tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("premove") / "model"
    shutil.copytree(DATA / "premove-model", folder)
    for name, sha256 in premove_record["left_out"].items():
        source = tokenizer_path / name
        assert hashlib.sha256(source.read_bytes()).hexdigest() == sha256, f"shared {name} is not the one saved"
        shutil.copy(source, folder / name)
    return folder


@pytest.mark.parametrize("fast_start", [True, False], ids=["fast-start", "transformers"])
def test_folder_written_before_the_layout_move_predicts_the_same_probabilities(
        premove_folder: Path, premove_record: dict, fast_start: bool) -> None:
    import torch

    from gpt2clf import Predictor

    predictor = Predictor.from_folder(premove_folder, fast_start=fast_start)
    assert predictor.label_names == ["a", "b", "c"]
    expected = torch.tensor(premove_record["probabilities"]["fast_start" if fast_start else "transformers"])
    got = predictor.predict_proba(premove_record["texts"])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
