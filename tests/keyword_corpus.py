"""Generated text whose label is written in it: the one generator of keyword corpora for the tests and benchmarks.

Every corpus here is filler words with the class's keyword (or two-word phrase) planted among them, so
only the keyword decides the label and a model, an explanation or a long-document setting can be checked
against a known answer. Not part of the installed package: the tests import it from ``tests/``, and
``benchmarks/long_documents.py`` puts ``tests/`` on its path.

* :func:`keyword_document` -- one document: filler words with keywords inserted (the building block);
* :func:`keyword_texts` -- ``n`` documents whose classes take turns, each with its class's keyword;
* :func:`planted_text` and :data:`PLANTED_KEYWORDS` -- the planted-keyword task of the explain and report
  tests (and of the README screenshots), which also has a keyword-free class ``none``; conftest's
  ``planted_run_dir`` trains it once per session;
* :func:`planted_phrase_corpus` -- long documents (600-900 GPT-2 tokens) where one two-word phrase,
  planted past the first window, decides the label: truncation scores chance on it.

Nothing here prints or touches the disk. Every function takes a seeded ``random.Random`` or a seed, so a
corpus is the same on every run.

Example::

    >>> texts, labels = keyword_texts(3, {"space": "rocket", "music": "guitar"}, ["the", "a"], 4, seed=0)
    >>> labels, all(("rocket" in t) == (y == "space") for t, y in zip(texts, labels))
    (['space', 'music', 'space'], True)
    >>> corpus = planted_phrase_corpus(["alpha", "beta", "gamma"], train=8, test=4, seed=0)
    >>> len(corpus.train_texts), sorted(set(corpus.train_labels))
    (8, ['class_0', 'class_1', 'class_2', 'class_3'])
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["FILLER", "PHRASES", "PLANTED_FILLER", "PLANTED_KEYWORDS", "PLANTED_LABELS", "PLANTED_MAX_LENGTH",
           "PLANTED_PER_CLASS", "PlantedCorpus", "filler_vocabulary", "keyword_document", "keyword_texts",
           "planted_phrase_corpus", "planted_text"]

# Short words that say nothing about any class (each one GPT-2 token).
FILLER = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "with", "as", "at", "by",
          "this"]


def keyword_document(rng: random.Random, keywords: Sequence[str], filler: Sequence[str], length: int | tuple[int, int],
                     *, after: int = 0, at: int | None = None) -> str:
    """``length`` filler words (or a count drawn from the ``(low, high)`` range, both included) with each of
    ``keywords`` inserted in turn at a random word position at or after word ``after`` (or at word ``at``)."""
    count = length if isinstance(length, int) else rng.randint(*length)
    words = rng.choices(filler, k=count)
    for keyword in keywords:
        words.insert(rng.randint(after, len(words)) if at is None else at, keyword)
    return " ".join(words)


def keyword_texts(n: int, keywords: dict[str, str], filler: Sequence[str] = FILLER, length: int | tuple[int, int] = 8,
                  *, seed: int = 0, at: int | None = None) -> tuple[list[str], list[str]]:
    """``n`` documents and their labels: the classes of ``keywords`` (label -> keyword) take turns, and each
    document is :func:`keyword_document` with its class's keyword."""
    rng = random.Random(seed)
    labels = [list(keywords)[i % len(keywords)] for i in range(n)]
    return [keyword_document(rng, [keywords[label]], filler, length, at=at) for label in labels], labels


# --- the planted-keyword task of the explain and report tests ---------------------------------------------
PLANTED_KEYWORDS = {"sport": "hockey", "tech": "python", "music": "guitar"}
PLANTED_LABELS = [*PLANTED_KEYWORDS, "none"]
PLANTED_PER_CLASS = 80  # training documents of each class
PLANTED_MAX_LENGTH = 16  # tokens the model reads: every planted document fits
PLANTED_FILLER = ["the", "a", "day", "people", "going", "time", "good", "some", "very", "many", "other", "new", "old",
                  "first", "last", "long", "great", "little", "own", "right", "big", "high", "small", "large", "next",
                  "early", "young", "important", "few", "public", "bad", "same", "able"]


def planted_text(rng: random.Random, label: str) -> tuple[str, tuple[int, int] | None]:
    """A document of the planted task: 6-10 filler words, and for class ``sport``, ``tech`` or ``music`` that
    class's keyword after the first word (so it is one GPT-2 token, " hockey" etc.); class ``none`` has no
    keyword. Returns the text and the character span of its keyword (None for ``none``)."""
    if label == "none":
        return keyword_document(rng, [], PLANTED_FILLER, (6, 10)), None
    keyword = PLANTED_KEYWORDS[label]
    text = keyword_document(rng, [keyword], PLANTED_FILLER, (6, 10), after=1)
    start = text.index(" " + keyword) + 1
    return text, (start, start + len(keyword))


# --- long documents decided by one phrase -----------------------------------------------------------------
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
