"""Type annotations on the public surface, ``py.typed``, and a light ``import calibkit``.

Every public function and method of calibkit (everything reachable from the public modules' ``__all__``, or
their non-underscore names where a module has none) carries an annotation on each parameter and on its
return (``__init__``'s return excepted), and every annotation resolves with ``typing.get_type_hints``: the
names it uses exist at run time or are imported under ``if TYPE_CHECKING:`` in the module that uses them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import subprocess
import sys
import typing

import calibkit

PUBLIC_MODULES = (
    "calibkit",
    "calibkit.metrics",
    "calibkit.streaming",
    "calibkit.uncertainty",
    "calibkit.ood",
    "calibkit.io",
    "calibkit.datasets",
    "calibkit.plot",
    "calibkit.report",
    "calibkit.monitor",
    "calibkit.dask",
    "calibkit.html",
    "calibkit.cli",
    "calibkit.calibrators",
    "calibkit.calibrators.classifier",
)

HEAVY = ("pandas", "matplotlib", "dask", "sklearn", "torch")


def _public_callables():
    """(qualified name, function) for every public function and method reachable from the public modules."""
    seen: set[int] = set()
    found = []
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name, None)
            if obj is None or id(obj) in seen or not str(getattr(obj, "__module__", "")).startswith("calibkit"):
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj):
                found.append((f"{obj.__module__}.{obj.__qualname__}", obj))
            elif inspect.isclass(obj):
                for klass in obj.__mro__:
                    if not klass.__module__.startswith("calibkit") or id(klass) in seen and klass is not obj:
                        continue
                    seen.add(id(klass))
                    for attr, value in vars(klass).items():
                        if attr.startswith("_") and attr != "__init__":
                            continue
                        if isinstance(value, (staticmethod, classmethod)):
                            value = value.__func__
                        if isinstance(value, property):
                            value = value.fget
                        if inspect.isfunction(value) and value.__module__.startswith("calibkit"):
                            found.append((f"{value.__module__}.{value.__qualname__}", value))
    return sorted(found, key=lambda item: item[0])


CALLABLES = _public_callables()


class _Absent:
    """Stands for a module named under ``if TYPE_CHECKING:`` that is not installed: any attribute is Any."""

    def __getattr__(self, name):
        return typing.Any


def _type_checking_namespace(module) -> dict:
    """The module's globals plus the names its ``if TYPE_CHECKING:`` block imports (run here; a name from an
    optional package that is not installed stands for Any)."""
    namespace = dict(vars(module))
    source = pathlib.Path(module.__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for statement in node.body:
                code = compile(ast.Module(body=[statement], type_ignores=[]), module.__file__, "exec")
                scope = {"__name__": module.__name__, "__package__": module.__package__}
                try:
                    exec(code, scope)  # noqa: S102 - the module's own import lines
                except ImportError:
                    for alias in statement.names:
                        bound = alias.asname or alias.name.split(".")[0]
                        scope[bound] = _Absent() if isinstance(statement, ast.Import) else typing.Any
                namespace.update({k: v for k, v in scope.items() if not k.startswith("__")})
    return namespace


def test_py_typed_is_shipped():
    assert (pathlib.Path(calibkit.__file__).parent / "py.typed").is_file()


def test_the_walk_finds_the_public_surface():
    names = {name for name, _ in CALLABLES}
    for expected in (
        "calibkit.metrics.ece",
        "calibkit.streaming.CalibrationAccumulator.update",
        "calibkit.streaming.CalibrationAccumulator.from_bytes",
        "calibkit.calibrators.scaling.TemperatureScaling.fit",
        "calibkit.calibrators._base.Calibrator.from_dict",
        "calibkit.calibrators.classifier.CalibratedClassifier.fit",
        "calibkit.plot.reliability_diagram",
        "calibkit.cli.main",
    ):
        assert expected in names
    assert len(CALLABLES) > 150


def test_every_public_callable_is_annotated():
    missing = []
    for name, func in CALLABLES:
        sig = inspect.signature(func)
        params = [
            p.name
            for i, p in enumerate(sig.parameters.values())
            if p.annotation is inspect.Parameter.empty and not (i == 0 and p.name in ("self", "cls"))
        ]
        no_return = sig.return_annotation is inspect.Signature.empty and func.__name__ != "__init__"
        if params or no_return:
            missing.append(f"{name}: parameters {params}" + (", return" if no_return else ""))
    assert not missing, f"{len(missing)} public callables lack annotations:\n" + "\n".join(missing)


def test_every_annotation_resolves():
    namespaces: dict[str, dict] = {}
    broken = []
    for name, func in CALLABLES:
        module = sys.modules[func.__module__]
        if module.__name__ not in namespaces:
            namespaces[module.__name__] = _type_checking_namespace(module)
        try:
            typing.get_type_hints(func, globalns=namespaces[module.__name__])
        except Exception as exc:  # noqa: BLE001 - list every failure, not the first
            broken.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not broken, "annotations that do not resolve:\n" + "\n".join(broken)


def test_import_calibkit_stays_light():
    code = (
        "import sys, calibkit, calibkit.calibrators.classifier, calibkit.io, calibkit.report, calibkit.monitor, "
        "calibkit.plot, calibkit.dask, calibkit.html, calibkit.cli\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(heavy))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", f"import calibkit imported: {run.stdout.strip()}"
