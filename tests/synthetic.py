"""Generated long documents where one short phrase decides the label: a check for long-document settings.

Each document is a run of filler words (drawn at random from a word list, e.g. the words of
real 20 Newsgroups posts, so the filler says nothing about the label) with its class's
two-word phrase planted once, after word ``plant_after``. At GPT-2's ~1.3 tokens per word, a
document of 260-420 words is 600-900 tokens: 10-16 windows of 64 tokens, of which exactly one
holds the phrase. Truncation never reads it, so truncation scores chance; a long-document
setting scores well only if it reads every window and lets the one that holds the phrase decide.

Used by the tests (``tests/test_long_documents.py``) and by ``benchmarks/long_documents.py``,
which compares chunk aggregations on it. Nothing here prints or touches the disk.

Example::

    >>> corpus = planted_phrase_corpus(["alpha", "beta", "gamma"], train=8, test=4, seed=0)
    >>> len(corpus.train_texts), sorted(set(corpus.train_labels))
    (8, ['class_0', 'class_1', 'class_2', 'class_3'])
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["PHRASES", "PlantedCorpus", "filler_vocabulary", "planted_phrase_corpus"]

# Two ordinary English words per class; neither word is a filler word (filler_vocabulary drops them).
PHRASES = ("violet harbor", "copper lantern", "silent meadow", "amber falcon", "crimson orchard", "hollow timber",
           "velvet glacier", "marble canyon")


@dataclass
class PlantedCorpus:
    """Training and test documents, their labels, and each document's phrase position (in words)."""

    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    phrases: dict[str, str]
    """Label -> the phrase that decides it."""
    train_positions: list[int]
    test_positions: list[int]


def filler_vocabulary(texts: Iterable[str], limit: int = 200_000) -> list[str]:
    """The whitespace-separated words of ``texts`` as written (punctuation, numbers and addresses
    included), in order, repeats kept (so sampling from the list follows the texts' word frequencies),
    at most ``limit``, without any word that holds a word of :data:`PHRASES`."""
    banned = re.compile("|".join(word for phrase in PHRASES for word in phrase.split()), re.IGNORECASE)
    words: list[str] = []
    for text in texts:
        words += [w for w in text.split() if not banned.search(w)]
        if len(words) >= limit:
            break
    return words[:limit]


def planted_phrase_corpus(filler: Sequence[str], *, classes: int = 4, train: int = 800, test: int = 200,
                          min_words: int = 260, max_words: int = 420, plant_after: int = 220,
                          seed: int = 0) -> PlantedCorpus:
    """Documents of ``min_words``-``max_words`` filler words with their class's phrase planted once, at a
    random word position at or after ``plant_after``; classes take turns, so they are balanced.

    Raises:
        ValueError: more classes than :data:`PHRASES`, an empty filler list, or lengths that leave no
            room after ``plant_after``.
    """
    if not 2 <= classes <= len(PHRASES):
        raise ValueError(f"classes must be between 2 and {len(PHRASES)}, got {classes}")
    if not filler:
        raise ValueError("the filler word list is empty")
    if not plant_after < min_words <= max_words:
        raise ValueError("need plant_after < min_words <= max_words")
    rng = random.Random(seed)
    phrases = {f"class_{i}": PHRASES[i] for i in range(classes)}
    labels = list(phrases)

    def documents(count: int) -> tuple[list[str], list[str], list[int]]:
        texts, names, positions = [], [], []
        for i in range(count):
            label = labels[i % classes]
            words = rng.choices(filler, k=rng.randint(min_words, max_words))
            position = rng.randint(plant_after, len(words))
            words[position:position] = phrases[label].split()
            texts.append(" ".join(words))
            names.append(label)
            positions.append(position)
        return texts, names, positions

    train_texts, train_labels, train_positions = documents(train)
    test_texts, test_labels, test_positions = documents(test)
    return PlantedCorpus(train_texts, train_labels, test_texts, test_labels, phrases, train_positions,
                         test_positions)
