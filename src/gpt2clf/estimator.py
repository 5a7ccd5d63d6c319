"""A scikit-learn estimator: :class:`GPT2TextClassifier`, built on :func:`gpt2clf.training.loop.fit`.

Data flow: ``fit(X, y)`` turns the texts and labels into in-memory splits
(:func:`gpt2clf.data.splits.labelled_texts`, labels named ``str(label)``), trains with a
:class:`~gpt2clf.config.Config` made of the estimator's parameters, and keeps the best
validation epoch's model; ``predict_proba`` runs a :class:`~gpt2clf.infer.predictor.Predictor`
over new texts. ``save`` writes an ordinary model folder (JSON + safetensors), which the CLI's
``evaluate`` and ``predict`` read too, and ``load`` reads any model folder back.

Guarantees: the constructor only stores its arguments (scikit-learn's convention), so
``get_params``, ``set_params``, ``clone``, ``Pipeline``, ``cross_val_score`` and
``GridSearchCV`` work; every check happens in ``fit`` (a bad value raises
:class:`~gpt2clf.errors.ConfigError` or :class:`~gpt2clf.errors.DataError`, both ValueErrors);
a method that needs a trained model raises ``NotFittedError`` before ``fit``. Training is
seeded (``seed``): on a CPU the same data and parameters give the same model.

Example::

    >>> from gpt2clf import GPT2TextClassifier
    >>> clf = GPT2TextClassifier(backbone="gpt2", epochs=2, freeze="backbone")    # doctest: +SKIP
    >>> clf.fit(["great film", "awful plot", ...], ["pos", "neg", ...])           # doctest: +SKIP
    >>> clf.predict(["what a film"]), clf.predict_proba(["what a film"]).shape    # doctest: +SKIP
    (array(['pos'], dtype='<U3'), (1, 2))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from gpt2clf.config import Config
from gpt2clf.data.batching import Windowing
from gpt2clf.data.labelled_files import join_fields
from gpt2clf.data.splits import labelled_texts
from gpt2clf.errors import DataError
from gpt2clf.infer.predictor import Predictor
from gpt2clf.model.folder import read_training_record, recorded_config, save_model

__all__ = ["GPT2TextClassifier"]

# Every parameter's default is Config's (read here, not retyped), but devices: one process, since a multi-GPU
# launch inside fit is not what an estimator should do. scikit-learn reads the parameters from the signature.
_DEFAULTS = Config()


class GPT2TextClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tunes a pretrained GPT-2 (or any Hugging Face AutoModel backbone) with our transformer
    blocks on texts, as a scikit-learn classifier.

    Every parameter but ``config_overrides`` is the :class:`~gpt2clf.config.Config` field of the
    same name (see ``gpt2clf train --help``); ``config_overrides`` sets any other field, e.g.
    ``{"lr_schedule": "cosine"}``. ``devices`` defaults to ``"1"`` (one process: a multi-GPU
    launch inside ``fit`` is not what an estimator should do).

    ``X`` is a list, tuple, NumPy array or pandas Series of strings; a pandas DataFrame's
    columns are joined per row as several text fields ("subject: ...\\n\\nbody: ...").
    Single-label ``y`` holds labels of any one sortable type (ints, strings, ...);
    ``classes_`` is ``np.unique(y)``. With ``multi_label=True``, ``y`` is a multi-hot indicator
    matrix (n_samples, n_labels), e.g. from ``MultiLabelBinarizer``; ``classes_`` is then
    ``np.arange(n_labels)`` and ``predict`` returns an indicator matrix using per-label
    thresholds tuned on the validation split (``thresholds_``).

    With ``fusion="tfidf"`` the TF-IDF part is kept (``fusion_``): ``predict_proba`` gives the
    fused probabilities that ``gpt2clf train`` with the same settings gives, and ``save`` writes
    the same ``fusion/`` folder.

    Fitted attributes: ``classes_``, ``model_`` (a :class:`~gpt2clf.model.classifier.GPT2Classifier`),
    ``tokenizer_``, ``fusion_`` (a :class:`~gpt2clf.model.fusion.Fusion`, or None), ``config_`` (the
    resolved Config), ``predictor_``, ``metrics_`` (validation figures), ``thresholds_``
    (multi-label, else None).

    Example::

        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import FunctionTransformer
        >>> clean = FunctionTransformer(lambda texts: [t.lower() for t in texts])
        >>> pipe = make_pipeline(clean, GPT2TextClassifier(epochs=3, freeze="backbone"))  # doctest: +SKIP
        >>> pipe.fit(train_texts, train_labels).score(test_texts, test_labels)           # doctest: +SKIP
    """

    def __init__(self, backbone: str = _DEFAULTS.backbone, tokenizer: str | None = _DEFAULTS.tokenizer,
                 max_length: int = _DEFAULTS.max_length, epochs: int = _DEFAULTS.epochs,
                 batch_size: int = _DEFAULTS.batch_size, learning_rate: float = _DEFAULTS.learning_rate,
                 head_learning_rate: float | None = _DEFAULTS.head_learning_rate,
                 n_embed: int | None = _DEFAULTS.n_embed, n_heads: int | None = _DEFAULTS.n_heads,
                 n_blocks: int = _DEFAULTS.n_blocks,
                 dropout: float = _DEFAULTS.dropout, pooling: str = _DEFAULTS.pooling, freeze: str = _DEFAULTS.freeze,
                 long_documents: str = _DEFAULTS.long_documents, fusion: str = _DEFAULTS.fusion,
                 warmup_ratio: float = _DEFAULTS.warmup_ratio, weight_decay: float = _DEFAULTS.weight_decay,
                 precision: str = _DEFAULTS.precision, accelerator: str = _DEFAULTS.accelerator, devices: str = "1",
                 seed: int = _DEFAULTS.seed, validation_ratio: float = _DEFAULTS.validation_ratio,
                 feature_cache: bool = _DEFAULTS.feature_cache, cache_dir: str | None = _DEFAULTS.cache_dir,
                 multi_label: bool = _DEFAULTS.multi_label,
                 config_overrides: dict[str, Any] | None = None) -> None:
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.head_learning_rate = head_learning_rate
        self.n_embed = n_embed
        self.n_heads = n_heads
        self.n_blocks = n_blocks
        self.dropout = dropout
        self.pooling = pooling
        self.freeze = freeze
        self.long_documents = long_documents
        self.fusion = fusion
        self.warmup_ratio = warmup_ratio
        self.weight_decay = weight_decay
        self.precision = precision
        self.accelerator = accelerator
        self.devices = devices
        self.seed = seed
        self.validation_ratio = validation_ratio
        self.feature_cache = feature_cache
        self.cache_dir = cache_dir
        self.multi_label = multi_label
        self.config_overrides = config_overrides

    # ---------------------------------------------------------------------------------
    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.input_tags.one_d_array = True  # a sequence of texts
        tags.input_tags.two_d_array = False  # not a numeric feature matrix
        tags.input_tags.string = True
        tags.classifier_tags.multi_label = bool(self.multi_label)
        tags.target_tags.two_d_labels = bool(self.multi_label)
        return tags

    @classmethod
    def config_params(cls) -> list[str]:
        """The parameters that are Config fields: every one but ``config_overrides``."""
        return [name for name in cls._get_param_names() if name != "config_overrides"]

    def make_config(self) -> Config:
        """The :class:`~gpt2clf.config.Config` these parameters describe (validated)."""
        params = {name: getattr(self, name) for name in self.config_params()}
        overrides = dict(self.config_overrides or {})
        clash = sorted(set(overrides) & set(params))
        if clash:
            raise DataError(f"config_overrides sets {clash[0]!r}, which is a parameter of its own; set it directly")
        return Config().updated(**params, **overrides)

    def fit(self, X: Any, y: Any) -> GPT2TextClassifier:
        """Train on texts ``X`` and labels ``y``; the model of the best validation epoch is kept.

        A ``validation_ratio`` share of ``X`` (stratified, seeded) picks the best epoch (and,
        multi-label, the thresholds); it is not trained on.

        Raises:
            ConfigError: an out-of-range parameter. DataError: texts that are not strings,
                lengths that differ, fewer than two classes, a wrong kind of ``y``.
        """
        from gpt2clf.training.loop import fit

        config = self.make_config()
        texts = _texts(X)
        if config.multi_label:
            indicator = _indicator(y, len(texts))
            classes = np.arange(indicator.shape[1])
            label_names = [str(c) for c in classes]
            rows = [[label_names[j] for j in np.flatnonzero(row)] for row in indicator]
            data = labelled_texts(texts, rows, label_names=label_names, multi_label=True)
        else:
            labels = _labels(y, len(texts))
            classes = np.unique(labels)
            label_names = [str(c) for c in classes]
            if len(set(label_names)) != len(label_names):
                raise DataError("two classes print the same (e.g. 1 and '1'); give labels of one type")
            data = labelled_texts(texts, [str(v) for v in labels], label_names=label_names)
        result = fit(config, data)
        self.classes_ = classes
        self._record = result.record()
        self._set_fitted(Predictor(result.model, result.tokenizer, windowing=Windowing.of(result.config),
                                   batch_size=result.config.batch_size,
                                   device="cpu" if result.config.accelerator == "cpu" else None,
                                   multi_label=result.config.multi_label, thresholds=result.thresholds,
                                   fusion=result.fusion),
                         result.config, result.metrics)
        return self

    def _set_fitted(self, predictor: Predictor, config: Config, metrics: dict[str, Any]) -> None:
        """The fitted attributes, all from one :class:`~gpt2clf.infer.predictor.Predictor` (network, tokenizer,
        fusion)."""
        self.predictor_ = predictor
        self.model_ = predictor.model
        self.tokenizer_ = predictor.tokenizer
        self.fusion_ = predictor.fusion
        self.config_ = config
        self.metrics_ = metrics
        self.thresholds_ = (np.asarray(predictor.thresholds, dtype=np.float64) if config.multi_label else None)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities (n_samples, n_classes), columns in ``classes_`` order; rows sum to 1
        (multi-label: each label's own probability)."""
        check_is_fitted(self, "predictor_")
        probabilities = self.predictor_.predict_proba(_texts(X)).numpy().astype(np.float64)
        if not self.config_.multi_label:
            probabilities /= probabilities.sum(axis=1, keepdims=True)  # exact sums after float32
        return probabilities

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class per text (multi-label: the indicator matrix of chosen labels)."""
        probabilities = self.predict_proba(X)
        if self.config_.multi_label:
            return (probabilities >= self.thresholds_).astype(np.int64)
        return self.classes_[probabilities.argmax(axis=1)]

    # ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write a model folder (``gpt2clf predict`` and ``evaluate`` read it, :meth:`load` reads it back).

        The classes are recorded as JSON values, so ints, strings, floats and bools come back
        as they went in; other label types come back as their ``str``.
        """
        check_is_fitted(self, "model_")
        classes = [c.item() if hasattr(c, "item") else c for c in self.classes_]
        recorded = classes if all(isinstance(c, (int, float, str, bool)) for c in classes) else None
        record = dataclasses.replace(self._record, sklearn_classes=recorded)
        save_model(path, self.model_, self.tokenizer_, record, fusion=self.fusion_)

    @classmethod
    def load(cls, path: str | Path) -> GPT2TextClassifier:
        """A fitted classifier from a model folder (saved by :meth:`save` or by ``gpt2clf train``).

        Its parameters are the recorded training config's. ``classes_`` are the saved classes
        (their types kept) for folders written by :meth:`save`; for other folders, the label
        names as strings (``np.arange`` for multi-label ones).
        """
        predictor = Predictor.from_folder(path, fast_start=False)  # transformers' tokenizer: saved again by save()
        config = recorded_config(path)
        record = read_training_record(path)
        known = {f.name for f in dataclasses.fields(Config)}
        params = {name: getattr(config, name) for name in cls.config_params()}
        overrides = {name: getattr(config, name) for name in known - set(params)
                     if getattr(config, name) != getattr(_DEFAULTS, name)}
        estimator = cls(**params, config_overrides=overrides or None)
        names = predictor.label_names
        saved = record.sklearn_classes
        if config.multi_label:
            estimator.classes_ = np.arange(len(names))
        elif isinstance(saved, list) and [str(c) for c in saved] == names:
            estimator.classes_ = np.asarray(saved)
        else:
            estimator.classes_ = np.asarray(names)
        estimator._record = record
        estimator._set_fitted(predictor, config, {"test": record.test_metrics})
        return estimator


def _texts(X: Any) -> list[str]:
    """A list of strings from a sequence, 1-D array or Series (a DataFrame: its columns joined per row)."""
    if isinstance(X, str):
        raise DataError("X must be a sequence of texts, not a single string; wrap it in a list")
    columns = getattr(X, "columns", None)
    if columns is not None:  # a pandas DataFrame: several text fields
        names = [str(c) for c in columns]
        return [join_fields(names, ["" if v is None else str(v) for v in row]) or ""
                for row in X.itertuples(index=False, name=None)]
    values = X.tolist() if hasattr(X, "tolist") else list(X)
    if values and isinstance(values[0], list):  # a 2-D array with one column
        if any(len(row) != 1 for row in values):
            raise DataError("X must be one text per sample; a 2-D array must have a single column")
        values = [row[0] for row in values]
    bad = next((v for v in values if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"X must hold strings (texts); found a {type(bad).__name__}: {str(bad)[:40]!r}")
    return values


def _labels(y: Any, n: int) -> np.ndarray:
    array = np.asarray(y)
    if array.ndim != 1:
        raise DataError(f"y must be one label per sample (1-D), got shape {array.shape}; for several labels per "
                        "text use multi_label=True with an indicator matrix")
    if len(array) != n:
        raise DataError(f"got {n} texts but {len(array)} labels")
    if array.dtype == object:
        try:
            np.unique(array)
        except TypeError as err:
            raise DataError("y mixes label types that cannot be sorted (e.g. ints and strings); give one type"
                            ) from err
    return array


def _indicator(y: Any, n: int) -> np.ndarray:
    try:
        array = np.asarray(y)
    except ValueError:
        array = np.asarray([], dtype=object)
    if array.ndim != 2 or array.dtype == object or not np.isin(array, (0, 1)).all():
        raise DataError("with multi_label=True, y must be a 0/1 indicator matrix (n_samples, n_labels); turn "
                        "lists of labels into one with sklearn.preprocessing.MultiLabelBinarizer")
    if len(array) != n:
        raise DataError(f"got {n} texts but {len(array)} label rows")
    return array.astype(np.int64)
