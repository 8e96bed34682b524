"""The docstring examples of stt_keras run as tests, and every layer and model has one.

The same examples run with `pytest --doctest-modules stt_keras` (setup.cfg sets
the same option flags); this file puts them in the default suite.
"""

import doctest

import pytest

from layer_checks import stt_keras_layer_classes, stt_keras_modules

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
MODULES = {module.__name__: module for module in stt_keras_modules()}


def _examples(module):
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module, module.__name__) if test.examples]


@pytest.mark.parametrize("name", sorted(name for name, module in MODULES.items() if _examples(module)))
def test_docstring_examples_run(name):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in _examples(MODULES[name]):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (output above)"


def test_every_layer_and_model_has_an_example():
    finder = doctest.DocTestFinder(exclude_empty=True)
    missing = sorted(
        cls.__name__ for cls in stt_keras_layer_classes()
        if "Example:" not in (cls.__doc__ or "") or not any(t.examples for t in finder.find(cls, cls.__name__, module=False))
    )
    assert not missing, f"layers and models without an Example in their docstring: {missing}"
