"""Every example in the package's docstrings runs and prints what it claims."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import nadam

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(nadam.__path__, prefix="nadam.")
    if info.name != "nadam.__main__"
)


@pytest.mark.parametrize("module_name", ["nadam", *MODULES])
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"


def test_the_package_has_docstring_examples() -> None:
    finder = doctest.DocTestFinder()
    examples = sum(
        len(test.examples)
        for name in ["nadam", *MODULES]
        for test in finder.find(importlib.import_module(name))
    )
    assert examples >= 30
