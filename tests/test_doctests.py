"""Every ``Examples`` section of every public docstring of calibkit runs as a doctest.

The public modules are found by walking the package (every module whose dotted name has no part starting with
"_"); a module whose optional dependency is missing (matplotlib, dask, ...) is skipped with the reason."""

import doctest
import importlib
import importlib.util
import inspect
import os
import pkgutil

import pytest

import calibkit

FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
# Modules that import without their optional extra but whose examples need it.
NEEDS = {"calibkit.dask": "dask", "calibkit.plot": "matplotlib"}


def public_modules():
    names = ["calibkit"]
    for info in pkgutil.walk_packages(calibkit.__path__, "calibkit."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _collect():
    finder = doctest.DocTestFinder(exclude_empty=True)
    params = []
    for name in public_modules():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # an optional extra that is not installed
            params.append(pytest.param(name, None, id=name,
                                       marks=pytest.mark.skip(reason=f"{name} needs {exc.name or exc}")))
            continue
        for test in finder.find(module, name):
            if test.examples and test.name.startswith(name):  # not the re-exports of other modules
                params.append(pytest.param(name, test.name, id=test.name))
    return params


PARAMS = _collect()


def test_modules_found():
    names = public_modules()
    for expected in ("calibkit.metrics", "calibkit.streaming", "calibkit.monitor", "calibkit.datasets",
                     "calibkit.ood", "calibkit.uncertainty"):
        assert expected in names
    assert any(n.startswith("calibkit.calibrators") for n in names)
    assert not any(part.startswith("_") for n in names for part in n.split("."))


@pytest.mark.parametrize("module_name, test_name", PARAMS)
def test_docstring_examples(module_name, test_name, tmp_path, monkeypatch):
    if module_name in NEEDS and importlib.util.find_spec(NEEDS[module_name]) is None:
        pytest.skip(f"{module_name}'s examples need {NEEDS[module_name]}")
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(module_name)
    (test,) = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, module_name) if t.name == test_name]
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    messages = []
    result = runner.run(test, out=messages.append)
    assert result.failed == 0, "".join(messages)


def _own_docstring(obj):
    return inspect.getdoc(obj) or ""


def test_exported_functions_and_classes_have_examples():
    missing = []
    for name in calibkit.__all__:
        obj = getattr(calibkit, name)
        if inspect.ismodule(obj) or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if "Examples\n--------" not in _own_docstring(obj):
            missing.append(name)
    assert not missing, f"exported without an Examples section: {missing}"


def test_doctests_do_not_write_into_the_source_tree():
    src = os.path.dirname(calibkit.__file__)
    assert not any(name.endswith((".png", ".json", ".state", ".prom")) for name in os.listdir(src))
