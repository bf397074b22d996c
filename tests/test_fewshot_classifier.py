"""FewShotClassifier: predictions with arbitrary labels, rejection, and a pickle-free save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpretrain.fewshot import METHODS, FewShotClassifier
from mmpretrain.fewshot.methods import protonet


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(3, 8)) * 3
    support_codes = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])                    # unbalanced on purpose
    query_codes = np.repeat(np.arange(3), 6)
    names = np.array(["cat", "dog", "eel"])
    return {
        "support": (centres[support_codes] + 0.3 * rng.normal(size=(9, 8))).astype(np.float32),
        "support_labels": names[support_codes],
        "query": (centres[query_codes] + 0.3 * rng.normal(size=(18, 8))).astype(np.float32),
        "query_labels": names[query_codes],
        "far": (-10 * centres.mean(axis=0, keepdims=True) + rng.normal(size=(2, 8))).astype(np.float32),
        "base_mean": rng.normal(size=8).astype(np.float32),
    }


@pytest.mark.parametrize("method", sorted(METHODS))
def test_predicts_string_labels(data, method):
    clf = FewShotClassifier(method).fit(data["support"], data["support_labels"])
    np.testing.assert_array_equal(clf.classes_, ["cat", "dog", "eel"])
    np.testing.assert_array_equal(clf.predict(data["query"]), data["query_labels"])
    proba = clf.predict_proba(data["query"])
    assert proba.shape == (18, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], data["query_labels"])
    assert clf.transductive == (method in ("bd_cspn", "soft_kmeans"))


def test_probabilities_are_the_methods_softmax(data):
    clf = FewShotClassifier("protonet").fit(data["support"], data["support_labels"])
    codes = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    scores = protonet(torch.from_numpy(data["support"])[None], codes[None], torch.from_numpy(data["query"])[None], 3)
    np.testing.assert_allclose(clf.predict_proba(data["query"]), torch.softmax(scores[0], -1).numpy(), atol=1e-6)


def test_rejects_queries_far_from_every_class(data):
    clf = FewShotClassifier("simpleshot", reject_threshold=0.5, unknown="?").fit(data["support"],
                                                                                  data["support_labels"])
    queries = np.vstack([data["query"], data["far"]])
    predicted = clf.predict(queries)
    np.testing.assert_array_equal(predicted[:18], data["query_labels"])
    np.testing.assert_array_equal(predicted[18:], ["?", "?"])
    similarity = clf.max_similarity(queries)
    assert similarity[:18].min() > 0.5 > similarity[18:].max()
    ints = FewShotClassifier("protonet", reject_threshold=0.5, unknown=-1).fit(data["support"], [5, 5, 5, 6, 6, 7, 7,
                                                                                                 7, 7])
    assert ints.predict(data["far"]).tolist() == [-1, -1]


def test_save_load_round_trip(data, tmp_path):
    clf = FewShotClassifier("knn", reject_threshold=0.4, unknown="none", k=2, temperature=0.5)
    clf.fit(data["support"], data["support_labels"], base_mean=data["base_mean"])
    path = clf.save(tmp_path / "nested" / "clf.npz")
    assert path.exists() and not list(path.parent.glob(".*tmp"))
    with np.load(path, allow_pickle=False) as raw:                            # loads without pickle
        assert set(raw.files) == {"config", "support", "codes", "base_mean"}
    loaded = FewShotClassifier.load(path)
    assert (loaded.method, loaded.reject_threshold, loaded.unknown) == ("knn", 0.4, "none")
    assert loaded.method_kwargs == {"k": 2, "temperature": 0.5}
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    queries = np.vstack([data["query"], data["far"]])
    np.testing.assert_array_equal(loaded.predict(queries), clf.predict(queries))
    np.testing.assert_allclose(loaded.predict_proba(queries), clf.predict_proba(queries))
    np.testing.assert_allclose(loaded.max_similarity(queries), clf.max_similarity(queries))


def test_int_labels_round_trip_as_ints(data, tmp_path):
    labels = [10, 10, 10, 20, 20, 30, 30, 30, 30]
    clf = FewShotClassifier("simpleshot_l2n").fit(data["support"], np.array(labels))
    loaded = FewShotClassifier.load(clf.save(tmp_path / "ints.npz"))
    assert loaded.classes_.dtype.kind == "i"
    np.testing.assert_array_equal(loaded.predict(data["query"]), clf.predict(data["query"]))


def test_errors(data, tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        FewShotClassifier().predict(data["query"])
    with pytest.raises(ValueError, match="unknown few-shot method"):
        FewShotClassifier("nearest")
    with pytest.raises(ValueError, match="9 rows but support_labels has 8"):
        FewShotClassifier().fit(data["support"], data["support_labels"][:8])
    with pytest.raises(ValueError, match="at least 2 classes"):
        FewShotClassifier().fit(data["support"][:3], ["a"] * 3)
    clf = FewShotClassifier().fit(data["support"], data["support_labels"])
    with pytest.raises(ValueError, match="dimension 4 but the classifier was fitted on 8"):
        clf.predict(np.zeros((2, 4)))
    np.savez(tmp_path / "other.npz", config=np.array('{"format": "something else"}'))
    with pytest.raises(ValueError, match="not a saved FewShotClassifier"):
        FewShotClassifier.load(tmp_path / "other.npz")
    odd = FewShotClassifier(unknown=object()).fit(data["support"], data["support_labels"])
    with pytest.raises(TypeError, match="cannot save unknown"):
        odd.save(tmp_path / "odd.npz")
