"""Shared test fixtures: the real data and tokenizer in ``../shared`` beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

# CI clones the repository into some folder beside shared/, so resolve from this file.
REPO_ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` relative to the repository root."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.fail(f"shared data folder not found at {path}; it must sit beside the repository")
    return path


@pytest.fixture(scope="session")
def archive_path(shared_dir: Path) -> Path:
    """The real 20 Newsgroups bydate archive."""
    return shared_dir / "data" / "20news-bydate.tar.gz"


@pytest.fixture(scope="session")
def tokenizer_path(shared_dir: Path) -> Path:
    """The real GPT-2 tokenizer folder (no pad token of its own)."""
    return shared_dir / "gpt2-tokenizer"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path: Path):
    """The real GPT-2 tokenizer loaded through gpt2clf (pad token = eos, right padding)."""
    from gpt2clf.data.batching import load_tokenizer

    return load_tokenizer(str(tokenizer_path))


@pytest.fixture(autouse=True, scope="session")
def _offline_hub(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never reach a model hub (names that are not local folders fail at once), and feature
    caches go to a temporary folder, never the user's ~/.cache."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["GPT2CLF_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 saved with save_pretrained: it loads through the same
    ``from_pretrained`` path as a hub id such as ``gpt2``."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256)
    GPT2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def gpt2_small_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GPT-2 with GPT-2 small's dimensions (124.4M parameters), saved to a folder."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2-small-random")
    GPT2Model(GPT2Config()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_backbone: Path, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained but complete gpt2clf model folder over the tiny backbone, three labels."""
    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier

    spec = ClassifierSpec(num_labels=3, label_names=["a", "b", "c"], n_embed=32, n_heads=2, n_blocks=1)
    folder = tmp_path_factory.mktemp("tiny-model") / "model"
    GPT2Classifier.from_backbone(str(tiny_backbone), spec).save_pretrained(
        folder, tokenizer=tokenizer, extra={"config": {"max_length": 64}})
    return folder


@pytest.fixture(scope="session")
def planted_run_dir(tiny_backbone: Path, tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted-keyword task (``keyword_corpus.planted_text``) trained once per session through ``gpt2clf
    train``: a run folder (model/, metrics.json, report.html, ...) that the explain and report tests share."""
    import csv
    import random

    from gpt2clf.cli import main
    from keyword_corpus import PLANTED_LABELS, PLANTED_MAX_LENGTH, PLANTED_PER_CLASS, planted_text

    rng = random.Random(0)
    rows = [(planted_text(rng, label)[0], label) for _ in range(PLANTED_PER_CLASS) for label in PLANTED_LABELS]
    rng.shuffle(rows)
    root = tmp_path_factory.mktemp("planted")
    with (root / "planted.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    run = root / "run"
    code = main(["train", "--train-file", str(root / "planted.csv"), "--backbone", str(tiny_backbone),
                 "--tokenizer", str(tokenizer_path), "--output", str(run), "--max-length", str(PLANTED_MAX_LENGTH),
                 "--epochs", "8", "--learning-rate", "3e-3", "--batch-size", "16", "--n-blocks", "1",
                 "--accelerator", "cpu", "--devices", "1", "--precision", "32-true", "--no-progress", "--json"])
    assert code == 0
    return run


# --- a real headless browser (Debian's chromium, driven by Playwright) ------------------------
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The system Chromium (``.ci/run`` installs Debian's ``chromium`` package when it is missing)."""
    import os
    import shutil

    for candidate in (os.environ.get("GPT2CLF_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("no chromium found: install Debian's 'chromium' package (apt-get install chromium) "
                "or set GPT2CLF_CHROMIUM to its executable")


@pytest.fixture(scope="module")
def browser(chromium_path: str):
    """A headless Chromium through Playwright, pointed at the system executable (no downloads).

    Module-scoped: Playwright's sync API keeps an event loop running in the main thread while
    it is open, which would break later tests that call ``asyncio.run``.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            yield instance
        finally:
            instance.close()
