"""Fingerprints of code: what a stage's cache key covers besides its hyperparameters.

:func:`code_fingerprint` hashes what a stage function computes with:

- its source, normalized: parsed and unparsed (:func:`ast.unparse`), without its decorators
  and docstring, so comments, blank lines and formatting do not count, and the stage's
  declared search space (in the decorator) does not either;
- the values it closes over, its default arguments, and the arguments a
  :func:`functools.partial` binds (numbers, strings and containers of them by value; NumPy
  arrays, torch tensors and pandas objects by their bytes; torch modules by their weights,
  scikit-learn estimators by their parameters and fitted attributes; other objects by a
  readable ``repr``, else by type);
- the global names it reads: values by value (numbers, strings, arrays, and plain lists,
  tuples, dicts and sets of them; other objects, such as a ``Counter`` or a client, are
  state and count by nothing), and functions and classes of the same top-level package,
  or of any module outside ``site-packages`` and the standard library, by their own
  fingerprints, recursively (``helpers.clean`` through a module too).

Functions and classes of installed libraries count by name only: upgrading a library does
not change keys. Where a function's source cannot be read (a function made with ``exec``,
say), its bytecode is hashed instead; that is exact for one Python version.

Example:
    >>> def f(x):
    ...     return x + 1
    >>> def g(x):
    ...     # a comment
    ...     return x + 1  # another one
    >>> code_fingerprint(f) == code_fingerprint(g)
    True
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import sys
import sysconfig
import textwrap
import types
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["code_fingerprint", "value_fingerprint"]

# Where installed libraries and the standard library live: code there is not followed.
_LIBRARY_ROOTS = tuple(
    os.path.realpath(p)
    for p in {
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    }
)
_SIMPLE = (type(None), bool, int, float, str)


def code_fingerprint(func: Callable[..., Any]) -> str:
    """sha256 hex of what ``func`` computes with (see the module docstring)."""
    return _Hasher(_package_of(func)).digest(func)


def value_fingerprint(value: Any) -> str:
    """sha256 hex of a value as :func:`code_fingerprint` sees a closed-over one."""
    return _Hasher("").digest(value)


def _package_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    if isinstance(obj, functools.partial):
        module = getattr(obj.func, "__module__", "") or ""
    return module.split(".")[0]


def _is_library(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module_name in sys.builtin_module_names or path is None:
        return module_name not in ("__main__",) and module is not None
    real = os.path.realpath(path)
    return any(real.startswith(root + os.sep) for root in _LIBRARY_ROOTS)


class _Hasher:
    """One fingerprint computation: memoizes by object id and cuts reference cycles."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.done: dict[int, Any] = {}
        self.keep: list[Any] = []  # ids stay valid while this lives

    def digest(self, obj: Any) -> str:
        token = self.token(obj)
        text = json.dumps(token, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # ------------------------------------------------------------------ values
    def token(self, obj: Any) -> Any:
        if isinstance(obj, _SIMPLE):
            if isinstance(obj, float) and not math.isfinite(obj):
                return ["float", repr(obj)]
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        self.done[key] = ["cycle", type(obj).__qualname__]
        self.keep.append(obj)
        token = self._token(obj)
        self.done[key] = token
        return token

    def _token(self, obj: Any) -> Any:
        if isinstance(obj, list | tuple):
            return [type(obj).__name__, [self.token(v) for v in obj]]
        if isinstance(obj, set | frozenset):
            items = [self.token(v) for v in obj]
            return ["set", sorted(items, key=lambda t: json.dumps(t, sort_keys=True, default=str))]
        if isinstance(obj, Mapping) and type(obj).__module__ in ("builtins", "collections"):
            items = [[self.token(k), self.token(v)] for k, v in obj.items()]
            return ["map", sorted(items, key=lambda t: json.dumps(t, sort_keys=True, default=str))]
        if isinstance(obj, bytes | bytearray):
            return ["bytes", hashlib.sha256(bytes(obj)).hexdigest()]
        if _is_stage(obj):
            return ["stage", obj.name, obj.identity]
        if isinstance(obj, functools.partial):
            return ["partial", self.token(obj.func), self.token(obj.args), self.token(obj.keywords)]
        if isinstance(obj, types.MethodType):
            return ["method", self.token(obj.__func__), self.token(obj.__self__)]
        if isinstance(obj, types.FunctionType):
            return self._function(obj)
        if isinstance(obj, type):
            return self._class(obj)
        if isinstance(obj, types.ModuleType):
            return ["module", obj.__name__]
        if isinstance(obj, types.BuiltinFunctionType | types.BuiltinMethodType):
            return ["builtin", getattr(obj, "__module__", None), obj.__qualname__]
        data = _data_token(obj)
        if data is not None:
            return data
        library = type(obj).__module__.split(".")[0]
        if library == "torch" and callable(getattr(obj, "state_dict", None)):
            # A model a stage closes over counts by its architecture and its weights.
            return ["torch.nn", repr(obj), self.token(dict(obj.state_dict()))]
        if library == "sklearn" and hasattr(obj, "get_params"):
            # An estimator by its parameters and, once fitted, its fitted attributes.
            return ["sklearn", _qualname(type(obj)), self.token(dict(vars(obj)))]
        if dataclasses.is_dataclass(obj):
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
            return ["dataclass", _qualname(type(obj)), self.token(fields)]
        if isinstance(obj, Mapping):
            return ["mapping", _qualname(type(obj)), self.token(dict(obj))]
        text = repr(obj)
        if " at 0x" not in text and " object at " not in text:
            return ["repr", _qualname(type(obj)), text]
        if callable(obj) and not self._library(type(obj)):
            # A callable object of the user's own class: its class's code and its state.
            return ["callable", self._class(type(obj)), self.token(getattr(obj, "__dict__", {}))]
        return ["opaque", _qualname(type(obj))]

    # ------------------------------------------------------------------ code
    def _library(self, obj: Any) -> bool:
        module = getattr(obj, "__module__", None) or ""
        if self.package and module.split(".")[0] == self.package:
            return False
        return _is_library(module)

    def _function(self, func: types.FunctionType) -> Any:
        if self._library(func):
            return ["lib", func.__module__, func.__qualname__]
        code = func.__code__
        closure = {}
        for name, cell in zip(code.co_freevars, func.__closure__ or (), strict=True):
            try:
                closure[name] = self.token(cell.cell_contents)
            except ValueError:  # an empty cell: the name is not bound yet
                closure[name] = ["unbound"]
        return [
            "function",
            _source_token(func),
            self.token(func.__defaults__),
            self.token(func.__kwdefaults__),
            closure,
            self._globals(func.__globals__, _names(code)),
        ]

    def _class(self, cls: type) -> Any:
        if self._library(cls):
            return ["lib", cls.__module__, cls.__qualname__]
        names: set[str] = set()
        module_globals = getattr(sys.modules.get(cls.__module__), "__dict__", {})
        for member in vars(cls).values():
            inner = getattr(member, "__func__", member)
            if isinstance(inner, types.FunctionType):
                names |= _names(inner.__code__)
        bases = [self.token(b) for b in cls.__bases__ if b is not object]
        return ["class", _source_token(cls), bases, self._globals(module_globals, names)]

    def _globals(self, namespace: Mapping[str, Any], names: set[str]) -> dict[str, Any]:
        """Tokens of the global names a piece of code reads (attributes of modules of the
        user's own code count too: ``helpers.clean``)."""
        out: dict[str, Any] = {}
        for name in sorted(names):
            if name not in namespace:
                continue  # a builtin, or an attribute name
            value = namespace[name]
            if isinstance(value, types.ModuleType):
                own = self.package and value.__name__.split(".")[0] == self.package
                if not own and _is_library(value.__name__):
                    continue
                for attr in sorted(names):
                    member = getattr(value, attr, None)
                    if isinstance(member, types.FunctionType | type):
                        out[f"{name}.{attr}"] = self.token(member)
                continue
            if (
                isinstance(value, types.FunctionType | type | functools.partial)
                or _is_stage(value)
                or _is_constant(value)
            ):
                out[name] = self.token(value)
        return out


def _is_stage(obj: Any) -> bool:
    return type(obj).__name__ == "Stage" and type(obj).__module__ == "stages._pipeline"


def _is_constant(value: Any) -> bool:
    """Whether a global counts by value: numbers, strings, arrays, and plain lists, tuples,
    dicts and sets of them (their value when the key is first computed in a process, which
    is normally their value at import). Other objects (a ``Counter``, a client, a model)
    count by nothing: they are state, not code."""
    if isinstance(value, (*_SIMPLE, bytes)):
        return True
    if type(value) in (list, tuple, set, frozenset):
        return all(_is_constant(v) for v in value)
    if type(value) is dict:
        return all(_is_constant(k) and _is_constant(v) for k, v in value.items())
    return _data_token(value) is not None


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _names(code: types.CodeType) -> set[str]:
    """Every global or attribute name a code object (and the code nested in it) reads."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _data_token(obj: Any) -> Any:
    """Arrays, tensors and frames by dtype, shape and bytes; None for anything else."""
    module = type(obj).__module__.split(".")[0]
    if module == "numpy" and hasattr(obj, "tobytes") and hasattr(obj, "dtype"):
        import numpy as np

        array = np.ascontiguousarray(obj)
        if array.dtype.hasobject:
            return ["ndarray", str(array.dtype), list(array.shape), repr(array.tolist())]
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        return ["ndarray", str(array.dtype), list(array.shape), digest]
    if module == "torch" and type(obj).__name__ in ("Tensor", "Parameter"):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        raw = flat.view(__import__("torch").uint8) if flat.numel() else flat
        digest = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
        return ["tensor", str(obj.dtype), list(obj.shape), digest]
    if module == "pandas" and type(obj).__name__ in ("DataFrame", "Series", "Index"):
        import pandas as pd

        hashed = pd.util.hash_pandas_object(obj, index=True).to_numpy().tobytes()
        names = list(map(str, getattr(obj, "columns", [getattr(obj, "name", None)])))
        dtypes = str(getattr(obj, "dtypes", getattr(obj, "dtype", "")))
        return ["pandas", type(obj).__name__, names, dtypes, hashlib.sha256(hashed).hexdigest()]
    return None


# ---------------------------------------------------------------------- source
def _source_token(obj: Any) -> Any:
    """Normalized source of a function or class; its bytecode where no source is found."""
    try:
        source = textwrap.dedent(inspect.getsource(obj))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        tree = None
    node = _definition(tree, obj) if tree is not None else None
    if node is None:
        code = getattr(obj, "__code__", None)
        return ["bytecode", _code_token(code)] if code is not None else ["nosource"]
    return ["source", ast.unparse(node)]


def _definition(tree: ast.AST, obj: Any) -> ast.AST | None:
    """The def/class/lambda node of ``obj`` in its parsed source, stripped of decorators and
    docstrings; None when it cannot be told apart (two lambdas on one line)."""
    if isinstance(obj, types.FunctionType) and obj.__name__ == "<lambda>":
        lambdas = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda)]
        return lambdas[0] if len(lambdas) == 1 else None
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    top = next((n for n in getattr(tree, "body", []) if isinstance(n, kinds)), None)
    if top is None:
        return None
    for node in ast.walk(top):
        if isinstance(node, kinds):
            node.decorator_list = []
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return top


def _code_token(code: types.CodeType) -> Any:
    consts = [_code_token(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return [code.co_code.hex(), consts, list(code.co_names), list(code.co_varnames)]
