"""The usage examples in the public API's docstrings run and show what they say (tiny models and data, offline)."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

#: modules whose docstring examples run here
MODULES = [
    "mmpretrain.data.transforms",
    "mmpretrain.encoders.load",
    "mmpretrain.fewshot.classifier",
    "mmpretrain.fewshot.evaluate",
    "mmpretrain.models.text",
    "mmpretrain.recsys.export",
    "mmpretrain.retrieval.index",
]

#: the public names that must carry an example, as ``module:name``
PUBLIC = [
    "mmpretrain.encoders:load_encoder",
    "mmpretrain.fewshot:evaluate_episodes",
    "mmpretrain.fewshot:FewShotClassifier",
    "mmpretrain.retrieval:build_index",
    "mmpretrain.recsys:export_features",
    "mmpretrain.data:ViewAugment",
    "mmpretrain.data:moby_transform",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{name}: no docstring examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0, f"{name}: a docstring example failed (report above)"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_api_has_an_example_that_runs_here(name: str) -> None:
    module, _, attr = name.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    assert ">>> " in (inspect.getdoc(obj) or ""), f"{name}: its docstring has no usage example"
    assert obj.__module__ in MODULES, f"{name}: {obj.__module__} is not in MODULES, so its example never runs"
