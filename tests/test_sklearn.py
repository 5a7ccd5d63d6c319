"""The scikit-learn estimator: conventions (params, clone, NotFittedError), Pipeline and
cross-validation, probabilities, and save/load with the original label types.

A tiny random GPT-2, frozen, with attention pooling learns which of three planted keywords a
text holds within a few epochs; chance accuracy is 1/3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from gpt2clf import GPT2TextClassifier
from gpt2clf.errors import ConfigError, DataError
from keyword_corpus import keyword_texts

KEYWORDS = {10: "rocket", 20: "football", 30: "guitar"}  # int labels on purpose


def keyword_data(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Upper-case texts whose int label is written in them as one keyword among filler words."""
    filler = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "with", "as"]
    texts, labels = keyword_texts(n, KEYWORDS, filler, 6, seed=seed)  # type: ignore[arg-type]  # int labels
    return [text.upper() for text in texts], np.asarray(labels)  # the pipeline lower-cases them


def lower(texts):
    return [text.lower() for text in texts]


def small_classifier(tokenizer_path: Path, backbone: Path, **changes) -> GPT2TextClassifier:
    params = dict(backbone=str(backbone), tokenizer=str(tokenizer_path), max_length=16, epochs=6, batch_size=16,
                  freeze="backbone", head_learning_rate=1e-2, n_embed=32, n_heads=2, n_blocks=1,
                  pooling="attention", precision="32-true", warmup_ratio=0.0, accelerator="cpu")
    return GPT2TextClassifier(**{**params, **changes})


@pytest.fixture(scope="module")
def fitted(tokenizer_path: Path, tiny_backbone: Path):
    """A pipeline (lower-casing, then the classifier) fitted on 150 texts."""
    texts, labels = keyword_data(150)
    pipe = make_pipeline(FunctionTransformer(lower), small_classifier(tokenizer_path, tiny_backbone))
    return pipe.fit(texts, labels)


def test_constructor_only_stores_parameters_and_clone_copies_them(tokenizer_path: Path, tiny_backbone: Path) -> None:
    clf = GPT2TextClassifier(epochs=-3, pooling="nonsense")  # validated in fit, not here
    assert clf.get_params()["epochs"] == -3
    copy = clone(small_classifier(tokenizer_path, tiny_backbone, epochs=2))
    assert copy.get_params()["epochs"] == 2 and copy.get_params()["backbone"] == str(tiny_backbone)
    assert copy.set_params(dropout=0.3).dropout == 0.3
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        clf.fit(["a b", "c d"], [0, 1])


def test_every_parameter_defaults_to_the_config_field_of_its_name() -> None:
    """The defaults are Config's, not retyped (devices aside: one process), and get_params lists them all."""
    import inspect

    from gpt2clf.config import Config

    signature, defaults = inspect.signature(GPT2TextClassifier).parameters, Config()
    names = GPT2TextClassifier.config_params()
    assert len(names) == 25 and set(names) <= {f for f in Config.__dataclass_fields__}
    assert {n: signature[n].default for n in names if signature[n].default != getattr(defaults, n)} == {"devices": "1"}
    assert set(GPT2TextClassifier().get_params()) == {*names, "config_overrides"}
    assert GPT2TextClassifier().make_config() == defaults.updated(devices="1")


def test_methods_before_fit_raise_not_fitted(tmp_path: Path) -> None:
    clf = GPT2TextClassifier()
    for call in (lambda: clf.predict(["x"]), lambda: clf.predict_proba(["x"]), lambda: clf.save(tmp_path / "m")):
        with pytest.raises(NotFittedError):
            call()


def test_tags_say_the_input_is_text() -> None:
    tags = GPT2TextClassifier().__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array
    assert GPT2TextClassifier(multi_label=True).__sklearn_tags__().classifier_tags.multi_label


def test_pipeline_learns_the_keywords_and_keeps_int_classes(fitted) -> None:
    texts, labels = keyword_data(60, seed=1)
    assert fitted.score(texts, labels) >= 0.8  # chance: 1/3
    clf = fitted[-1]
    assert clf.classes_.tolist() == [10, 20, 30]
    predicted = fitted.predict(texts)
    assert predicted.dtype.kind == "i" and set(predicted.tolist()) <= {10, 20, 30}
    probabilities = fitted.predict_proba(texts)
    assert probabilities.shape == (60, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert (clf.classes_[probabilities.argmax(axis=1)] == predicted).all()


def test_saved_classifier_loads_with_the_same_classes_and_probabilities(fitted, tmp_path: Path) -> None:
    clf = fitted[-1]
    clf.save(tmp_path / "model")
    loaded = GPT2TextClassifier.load(tmp_path / "model")
    assert loaded.classes_.tolist() == [10, 20, 30] and loaded.classes_.dtype.kind == "i"
    texts = lower(keyword_data(12, seed=2)[0])
    np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)
    assert loaded.predict(texts).tolist() == clf.predict(texts).tolist()
    assert loaded.get_params()["n_embed"] == 32 and loaded.get_params()["pooling"] == "attention"


def test_cross_val_score_and_grid_search_run_on_clones(tokenizer_path: Path, tiny_backbone: Path) -> None:
    texts, labels = keyword_data(90)
    labels = np.asarray([{10: "space", 20: "sport", 30: "music"}[y] for y in labels])  # string labels too
    scores = cross_val_score(small_classifier(tokenizer_path, tiny_backbone, epochs=4), texts, labels, cv=2)
    assert scores.shape == (2,) and scores.mean() > 0.5, scores  # chance: 1/3
    search = GridSearchCV(small_classifier(tokenizer_path, tiny_backbone, epochs=2), {"n_blocks": [0, 1]}, cv=2,
                          refit=False)
    search.fit(texts, labels)
    assert sorted(search.cv_results_["param_n_blocks"].tolist()) == [0, 1]


def test_bad_inputs_to_fit_are_value_errors(tokenizer_path: Path, tiny_backbone: Path) -> None:
    clf = small_classifier(tokenizer_path, tiny_backbone)
    with pytest.raises(DataError, match="not a single string"):
        clf.fit("one text", [1])
    with pytest.raises(DataError, match="must hold strings"):
        clf.fit([1, 2, 3], [0, 1, 0])
    with pytest.raises(DataError, match="3 texts but 2 labels"):
        clf.fit(["a", "b", "c"], [0, 1])
    with pytest.raises(DataError, match="MultiLabelBinarizer"):
        small_classifier(tokenizer_path, tiny_backbone, multi_label=True).fit(["a", "b"], [["x"], ["y"]])
    with pytest.raises(DataError, match="multi_label=True"):
        clf.fit(["a", "b"], np.eye(2))


def test_fusion_tfidf_is_kept_by_fit_predict_proba_save_and_load(tokenizer_path: Path, tiny_backbone: Path,
                                                                 tmp_path: Path) -> None:
    """fusion="tfidf": predict_proba is the fused probability, save writes fusion/, and the saved folder
    (loaded with pickle blocked) gives the same probabilities. One epoch of a random network is near
    chance here while TF-IDF reads the keyword, so a lost TF-IDF part shows as chance accuracy."""
    import json
    import os
    import subprocess
    import sys

    texts, labels = keyword_data(200)
    test_texts, test_labels = keyword_data(90, seed=1)
    clf = small_classifier(tokenizer_path, tiny_backbone, fusion="tfidf", epochs=1, freeze="none", learning_rate=1e-5,
                           head_learning_rate=1e-5)
    clf.fit(texts, labels)
    assert clf.fusion_ is not None
    proba = clf.predict_proba(test_texts)
    components = clf.predictor_.component_probabilities(test_texts)
    np.testing.assert_allclose(proba, components["fused"].numpy(), atol=1e-6)
    tfidf_alone = float(np.mean(clf.classes_[components["tfidf"].numpy().argmax(1)] == test_labels))
    network_alone = float(np.mean(clf.classes_[components["network"].numpy().argmax(1)] == test_labels))
    accuracy = clf.score(test_texts, test_labels)
    assert tfidf_alone >= 0.9 and network_alone < 0.6, (tfidf_alone, network_alone)
    assert accuracy >= tfidf_alone - 0.02, (accuracy, tfidf_alone)

    folder = tmp_path / "estimator-model"
    clf.save(folder)
    assert (folder / "fusion" / "fusion.json").is_file()
    code = (
        "import json, pickle, sys\n"
        "def blocked(*args, **kwargs):\n"
        "    raise RuntimeError('pickle is blocked')\n"
        "pickle.load = pickle.loads = blocked\n"
        "pickle.Unpickler = type('BlockedUnpickler', (pickle.Unpickler,), {'load': blocked})\n"
        "from gpt2clf.infer.predictor import Predictor\n"
        f"predictor = Predictor.from_folder({str(folder)!r}, precision='32-true')\n"
        "assert predictor.fusion is not None\n"
        f"print(json.dumps(predictor.predict_proba({test_texts!r}).tolist()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.asarray(json.loads(done.stdout)), proba, atol=1e-5)
    again = GPT2TextClassifier.load(folder)
    assert again.fusion_ is not None and again.fusion_.weight == clf.fusion_.weight
    np.testing.assert_allclose(again.predict_proba(test_texts), proba, atol=1e-5)
