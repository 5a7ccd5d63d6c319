"""A planted-keyword task shared by the explain and report tests.

Every document is 6-10 filler words drawn from one shared vocabulary; a document of class
``sport``, ``tech`` or ``music`` also holds that class's keyword at a random position after
the first word (so the keyword is one GPT-2 token, " hockey" etc.), and a ``none`` document
holds no keyword. Only the keyword decides the class, so a faithful explanation must point
at it. The run is trained once per test session through ``gpt2clf train`` and shared.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

KEYWORDS = {"sport": "hockey", "tech": "python", "music": "guitar"}
LABELS = [*KEYWORDS, "none"]
FILLER = ["the", "a", "day", "people", "going", "time", "good", "some", "very", "many", "other", "new", "old", "first",
          "last", "long", "great", "little", "own", "right", "big", "high", "small", "large", "next", "early", "young",
          "important", "few", "public", "bad", "same", "able"]
PER_CLASS = 80
MAX_LENGTH = 16

_RUNS: dict[str, Path] = {}


def planted_text(rng: random.Random, label: str) -> tuple[str, tuple[int, int] | None]:
    """A document of class ``label`` and the character span of its keyword (None for ``none``)."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(6, 10))]
    if label == "none":
        return " ".join(words), None
    position = rng.randint(1, len(words))
    words.insert(position, KEYWORDS[label])
    start = len(" ".join(words[:position])) + 1
    return " ".join(words), (start, start + len(KEYWORDS[label]))


def planted_run(root: Path, backbone: Path, tokenizer_path: Path) -> Path:
    """Train (once per session) a tiny model on planted-keyword data; returns the run folder."""
    from gpt2clf.cli import main

    key = str(root)
    if key in _RUNS:
        return _RUNS[key]
    rng = random.Random(0)
    rows = [(planted_text(rng, label)[0], label) for _ in range(PER_CLASS) for label in LABELS]
    rng.shuffle(rows)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "planted.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    run = root / "run"
    code = main(["train", "--train-file", str(data), "--backbone", str(backbone), "--tokenizer", str(tokenizer_path),
                 "--output", str(run), "--max-length", str(MAX_LENGTH), "--epochs", "8", "--learning-rate", "3e-3",
                 "--batch-size", "16", "--n-blocks", "1", "--accelerator", "cpu", "--devices", "1",
                 "--precision", "32-true", "--no-progress", "--json"])
    assert code == 0
    _RUNS[key] = run
    return run
