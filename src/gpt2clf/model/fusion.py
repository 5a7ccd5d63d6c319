"""TF-IDF fusion: a bag-of-words linear model whose probabilities are mixed with the network's.

A linear model over word 1-2-gram TF-IDF features catches cheaply what a transformer that
reads at most a few hundred tokens misses (on 20 Newsgroups a TF-IDF linear SVM alone scores
about 86%). gpt2clf fits one on the training split only, then mixes the two models'
probabilities with a weight chosen on the validation split only:

    p = w * p_network + (1 - w) * p_tfidf                    ("probabilities"), or
    p = softmax(w * log p_network + (1 - w) * log p_tfidf)   ("log-probabilities"),

whichever of the two, and whichever ``w`` on a 0.05 grid, scores best on validation. By default
the TF-IDF model is then refit on training + validation with ``w`` and the mode kept
(:func:`refit_fusion`, the refit scikit-learn's ``GridSearchCV`` does after choosing); the test
split is never seen. ``fusion.json`` records which splits the saved TF-IDF model was fit on.

The linear model is scikit-learn's ``LinearSVC`` calibrated with ``CalibratedClassifierCV``
(sigmoid, ``ensemble=False``): one weight matrix and one sigmoid per class. On disk (a
``fusion/`` folder inside the model folder) it is JSON and ``.npz`` arrays only, read back
with ``allow_pickle=False``; the vectorizer is rebuilt from its vocabulary and idf weights,
so nothing is ever unpickled.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2clf.errors import ConfigError, ModelLoadError, first_line
from gpt2clf.files import atomic_write_bytes, atomic_write_json

__all__ = ["FUSION_FOLDER", "Fusion", "TfidfModel", "choose_fusion", "mix_probabilities", "refit_fusion"]

FUSION_FOLDER = "fusion"
MIX_MODES = ("probabilities", "log-probabilities")
# Vectorizer settings: word 1-2 grams, sublinear tf, terms in at least two training documents.
VECTORIZER = {"ngram_range": (1, 2), "sublinear_tf": True, "min_df": 2, "max_features": 300_000,
              "strip_accents": "unicode", "dtype": np.float32}
MIN_VALIDATION_DOCUMENTS = 20
_EPS = 1e-12


@dataclass
class TfidfModel:
    """TF-IDF features and a calibrated linear classifier, stored as plain arrays."""

    terms: list[str]
    idf: np.ndarray          # (V,)
    coef: np.ndarray         # (C, V) LinearSVC weights
    intercept: np.ndarray    # (C,)
    sigmoid_a: np.ndarray    # (C,) Platt scaling: p_c = 1 / (1 + exp(a_c * d_c + b_c)), then normalised
    sigmoid_b: np.ndarray    # (C,)

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], num_labels: int, *, seed: int = 0) -> TfidfModel:
        """Fit on the training split (the only data it ever sees)."""
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.svm import LinearSVC

        vectorizer = TfidfVectorizer(**VECTORIZER)
        features = vectorizer.fit_transform(list(texts))
        y = np.asarray(labels)
        folds = int(min(3, np.bincount(y, minlength=num_labels)[np.unique(y)].min()))
        if folds < 2:
            raise ConfigError("TF-IDF fusion needs at least 2 training documents of every class")
        calibrated = CalibratedClassifierCV(LinearSVC(C=0.5, random_state=seed), method="sigmoid", cv=folds,
                                            ensemble=False)
        calibrated.fit(features, y)
        fitted = calibrated.calibrated_classifiers_[0]
        svc = fitted.estimator
        classes = [int(c) for c in calibrated.classes_]
        coef = np.zeros((num_labels, features.shape[1]), dtype=np.float32)
        intercept = np.full(num_labels, -1e4, dtype=np.float32)  # absent classes: never predicted
        a = np.zeros(num_labels, dtype=np.float32)
        b = np.full(num_labels, 30.0, dtype=np.float32)
        svc_coef = svc.coef_ if len(classes) > 2 else np.vstack([-svc.coef_, svc.coef_])
        svc_intercept = svc.intercept_ if len(classes) > 2 else np.concatenate([-svc.intercept_, svc.intercept_])
        calibrators = fitted.calibrators if len(classes) > 2 else [fitted.calibrators[0]] * 2
        for row, (label, calibrator) in enumerate(zip(classes, calibrators, strict=True)):
            coef[label] = svc_coef[row]
            intercept[label] = svc_intercept[row]
            a[label], b[label] = calibrator.a_, calibrator.b_
            if len(classes) == 2 and row == 0:  # the binary calibrator is for the positive class
                a[label], b[label] = -calibrator.a_, -calibrator.b_
        terms = [""] * len(vectorizer.vocabulary_)
        for term, index in vectorizer.vocabulary_.items():
            terms[index] = term
        return cls(terms, vectorizer.idf_.astype(np.float32), coef, intercept, a, b)

    def _vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(**{**VECTORIZER, "vocabulary": self.terms})
        vectorizer.idf_ = self.idf  # sets the fitted idf diagonal; the vocabulary is fixed above
        return vectorizer

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated class probabilities (N, C), rows summing to 1."""
        features = self._vectorizer().transform(list(texts))
        decision = np.asarray(features @ self.coef.T) + self.intercept
        z = np.clip(self.sigmoid_a * decision + self.sigmoid_b, -60, 60)
        p = 1.0 / (1.0 + np.exp(z))
        p = np.where(self.intercept < -1e3, 0.0, p)
        total = p.sum(axis=1, keepdims=True)
        uniform = np.full_like(p, 1.0 / p.shape[1])
        return np.where(total > 0, p / np.maximum(total, _EPS), uniform).astype(np.float32)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "vocabulary.json", self.terms)
        buffer = io.BytesIO()
        np.savez(buffer, idf=self.idf, coef=self.coef, intercept=self.intercept, sigmoid_a=self.sigmoid_a,
                 sigmoid_b=self.sigmoid_b)
        atomic_write_bytes(folder / "tfidf.npz", buffer.getvalue())

    @classmethod
    def load(cls, folder: Path) -> TfidfModel:
        try:
            terms = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
            with np.load(folder / "tfidf.npz", allow_pickle=False) as arrays:
                values = {k: arrays[k] for k in ("idf", "coef", "intercept", "sigmoid_a", "sigmoid_b")}
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"{folder} holds no readable TF-IDF model ({first_line(err)}); "
                                 "save the model again") from err
        if not isinstance(terms, list) or len(terms) != values["coef"].shape[1] != 0:
            raise ModelLoadError(f"{folder}: vocabulary.json and tfidf.npz do not match; save the model again")
        return cls(terms=[str(t) for t in terms], **values)


def mix_probabilities(network: np.ndarray, tfidf: np.ndarray, weight: float, mode: str) -> np.ndarray:
    """Mixed probabilities (N, C) of the two models (``weight`` on the network)."""
    if mode == "probabilities":
        return weight * network + (1.0 - weight) * tfidf
    if mode == "log-probabilities":
        logits = weight * np.log(np.maximum(network, _EPS)) + (1.0 - weight) * np.log(np.maximum(tfidf, _EPS))
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)
    raise ConfigError(f"fusion mode must be one of {', '.join(MIX_MODES)}; got {mode!r}")


@dataclass
class Fusion:
    """A fitted TF-IDF model and how to mix it with the network."""

    tfidf: TfidfModel
    weight: float
    mode: str
    validation: dict[str, Any]
    """What the choice saw on the validation split: accuracy of each model and of the mix."""
    tfidf_splits: tuple[str, ...] = ("train",)
    """The splits :attr:`tfidf` was fit on: ``("train",)``, or ``("train", "validation")`` after
    :func:`refit_fusion` (the validation figures above are from before the refit)."""
    tfidf_documents: int | None = None
    """How many documents :attr:`tfidf` was fit on (None in folders saved before this was recorded)."""

    def mix(self, network: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        return mix_probabilities(network, self.tfidf.predict_proba(texts), self.weight, self.mode)

    def component_probabilities(self, network: torch.Tensor, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``network`` (N, C) probabilities of ``texts`` with this TF-IDF model's and the mix of both
        (``network``, ``tfidf``, ``fused``), TF-IDF run once."""
        tfidf = self.tfidf.predict_proba(texts)
        fused = mix_probabilities(network.numpy(), tfidf, self.weight, self.mode)
        return {"network": network, "tfidf": torch.from_numpy(tfidf), "fused": torch.from_numpy(fused).float()}

    def save(self, model_folder: Path) -> None:
        """Write ``fusion/`` into a model folder (called while the folder is being assembled)."""
        folder = Path(model_folder) / FUSION_FOLDER
        self.tfidf.save(folder)
        atomic_write_json(folder / "fusion.json", {"weight": self.weight, "mode": self.mode,
                                                   "tfidf_splits": list(self.tfidf_splits),
                                                   "tfidf_documents": self.tfidf_documents,
                                                   "validation": self.validation})

    @classmethod
    def load(cls, model_folder: Path) -> Fusion | None:
        """The fusion saved in a model folder, or None when it has none."""
        folder = Path(model_folder) / FUSION_FOLDER
        if not folder.is_dir():
            return None
        try:
            meta = json.loads((folder / "fusion.json").read_text(encoding="utf-8"))
            weight, mode = float(meta["weight"]), str(meta["mode"])
            # Folders saved before the refit existed always fit TF-IDF on the training split alone.
            splits = tuple(str(s) for s in meta.get("tfidf_splits", ["train"]))
            documents = None if meta.get("tfidf_documents") is None else int(meta["tfidf_documents"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelLoadError(f"{folder}/fusion.json is missing or malformed ({first_line(err)}); "
                                 "save the model again") from err
        if mode not in MIX_MODES or not 0.0 <= weight <= 1.0:
            raise ModelLoadError(f"{folder}/fusion.json has an invalid weight or mode; save the model again")
        return cls(TfidfModel.load(folder), weight, mode, dict(meta.get("validation", {})), splits, documents)


def choose_fusion(tfidf: TfidfModel, network_validation: np.ndarray, validation_texts: Sequence[str],
                  validation_labels: Sequence[int]) -> Fusion:
    """The weight and mode that score best on the validation split (ties: the lower log loss).

    Every candidate (21 weights from 0 to 1 for each mix mode) is scored; the returned
    :attr:`Fusion.validation` keeps the whole grid under ``"grid"`` with each one's accuracy and
    log loss, and the model folder saves it in ``fusion/fusion.json``.

    Raises:
        ConfigError: a validation split too small to choose a weight on.
    """
    y = np.asarray(validation_labels)
    if len(y) < MIN_VALIDATION_DOCUMENTS:
        raise ConfigError(f"TF-IDF fusion chooses its weight on the validation split, which has {len(y)} "
                          f"documents; it needs at least {MIN_VALIDATION_DOCUMENTS} (use more data or a larger "
                          "--validation-ratio, or --fusion none)")
    tfidf_validation = tfidf.predict_proba(validation_texts)
    rows = np.arange(len(y))

    def score(mode: str, weight: float) -> dict[str, Any]:
        mixed = mix_probabilities(network_validation, tfidf_validation, weight, mode)
        return {"mode": mode, "weight": weight, "accuracy": float((mixed.argmax(axis=1) == y).mean()),
                "loss": float(-np.log(np.maximum(mixed[rows, y], _EPS)).mean())}

    grid = [score(mode, float(weight)) for mode in MIX_MODES for weight in np.round(np.linspace(0.0, 1.0, 21), 2)]
    best = max(grid, key=lambda candidate: (candidate["accuracy"], -candidate["loss"]))  # first of exact ties
    summary = {
        "documents": len(y),
        "network_accuracy": float((network_validation.argmax(axis=1) == y).mean()),
        "tfidf_accuracy": float((tfidf_validation.argmax(axis=1) == y).mean()),
        "fused_accuracy": best["accuracy"],
        "fused_loss": best["loss"],
        # Every candidate's score, so a reader can see how clear the choice was.
        "grid": grid,
    }
    return Fusion(tfidf, best["weight"], best["mode"], summary)


def refit_fusion(fusion: Fusion, texts: Sequence[str], labels: Sequence[int], num_labels: int, *,
                 seed: int = 0) -> Fusion:
    """``fusion`` with its TF-IDF model refit on ``texts`` (training + validation); weight and mode kept.

    The weight and mode were chosen on validation with a TF-IDF model that never saw it, so the
    validation figures stay honest; refitting afterwards lets the final TF-IDF model learn from
    every labelled document (about 11% more on 20 Newsgroups with a 10% validation split). Never
    pass test documents.
    """
    refit = TfidfModel.fit(texts, labels, num_labels, seed=seed)
    return Fusion(refit, fusion.weight, fusion.mode, fusion.validation, ("train", "validation"), len(texts))
