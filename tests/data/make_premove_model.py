"""How ``tests/data/premove-model/`` was made: run once with the code of commit 8ae9608 (before
the layout move of issue 38), never by the test suite.

    git worktree add /tmp/old 8ae9608
    PYTHONPATH=/tmp/old/src python tests/data/make_premove_model.py /work/shared/gpt2-tokenizer

It writes a tiny random model folder (a 2-wide GPT-2 backbone, so the 50,257-row embedding stays
small) and ``premove-probabilities.json``: texts and the float32 probabilities that code gave for
them, with the fast start (native GPT-2 body) and with transformers' classes. The GPT-2 tokenizer's
large files (tokenizer.json, vocab.json, merges.txt) are left out of the committed folder; the test
copies them back from the shared tokenizer folder, after checking they are the same bytes as the
ones written here (their SHA-256 is recorded in the JSON).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from gpt2clf.batching import load_tokenizer
from gpt2clf.prediction import Predictor
from transformers import GPT2Config, GPT2Model

from gpt2clf.model import ClassifierSpec, GPT2Classifier

HERE = Path(__file__).parent
FOLDER = HERE / "premove-model"
LARGE_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
TEXTS = [
    "The rocket reached orbit after a second burn of the upper stage.",
    "Is there a driver for this graphics card that works under X11?",
    "He scored twice in the third period and the crowd went wild.",
    "",
    "word " * 200,  # longer than max_length: truncated
]


def main(tokenizer_path: str) -> None:
    torch.manual_seed(0)
    scratch = HERE / "_scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    GPT2Model(GPT2Config(n_layer=1, n_embd=2, n_head=1, n_positions=64)).save_pretrained(scratch / "backbone")
    spec = ClassifierSpec(num_labels=3, label_names=["a", "b", "c"], n_embed=4, n_heads=2, n_blocks=1)
    shutil.rmtree(FOLDER, ignore_errors=True)
    GPT2Classifier.from_backbone(str(scratch / "backbone"), spec).save_pretrained(
        FOLDER, tokenizer=load_tokenizer(tokenizer_path), extra={"config": {"max_length": 64}})
    shutil.rmtree(scratch)
    record = {
        "written_by": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(sys.modules["gpt2clf"].__file__).parent).stdout.strip(),
        "texts": TEXTS,
        "probabilities": {
            "fast_start": Predictor.from_folder(FOLDER).predict_proba(TEXTS).tolist(),
            "transformers": Predictor.from_folder(FOLDER, fast_start=False).predict_proba(TEXTS).tolist(),
        },
        "left_out": {},
    }
    for name in LARGE_TOKENIZER_FILES:
        path = FOLDER / name
        if path.exists():
            record["left_out"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
            path.unlink()
    (HERE / "premove-probabilities.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
