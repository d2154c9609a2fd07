"""MkDocs hook (mkdocs.yml): the reference pages, generated from the code at every build.

* ``reference/configuration.md``: every key of the typed study configuration
  (:class:`flows.StudyConfig` and its sections), its type, default (and the shipped YAML's
  value), rule and meaning; the ``eeipu serve`` keys; each method's options.
* ``reference/cli.md``: ``eeipu --help`` and each command's ``--help``.
* ``reference/api/<package>.md``: one mkdocstrings entry per name in the ``__all__`` of
  ``eeipu``, ``stages`` and ``flows``. A public name without a docstring is a warning, so
  the strict build (``make docs``, ``tests/test_docs.py``) fails on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("eeipu", "stages", "flows")
CONF = REPO / "flows" / "conf"

log = get_plugin_logger(__name__)


def on_files(files: Files, config: Any) -> Files:
    pages = {
        "reference/configuration.md": configuration_page(),
        "reference/cli.md": cli_page(),
        **{f"reference/api/{pkg}.md": api_page(pkg) for pkg in PACKAGES},
    }
    for src_uri, content in pages.items():
        files.append(File.generated(config, src_uri, content=content))
    return files


# ---------------------------------------------------------------------- configuration
def _type(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML terms."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"list[{_type(args[0])}]"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    return {"ByteSize": "size"}.get(annotation.__name__, annotation.__name__)


def _yaml(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value if isinstance(value, str) and value else json.dumps(value)}`"


def _rules(model: type, name: str, field: Any) -> list[str]:
    """The rules of a field: its validators whose docstring states one ("must ...")."""
    metadata = [*field.metadata, *_nested_metadata(field.annotation)]
    funcs = [getattr(meta, "func", None) for meta in metadata]
    decorators = model.__pydantic_decorators__.field_validators.values()
    funcs += [d.func for d in decorators if name in d.info.fields]
    docs = [" ".join((getattr(f, "__doc__", None) or "").split()) for f in funcs]
    return [_inline(d) for d in docs if d.startswith("must")]


def _nested_metadata(annotation: Any) -> list[Any]:
    """The metadata of ``Annotated`` types inside a union (``Bytes | None``)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return list(annotation.__metadata__)
    return [m for arg in typing.get_args(annotation) for m in _nested_metadata(arg)]


def _inline(text: str) -> str:
    """reST roles and literals (``x``, :class:`x`) as Markdown code."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`").replace("|", "\\|")


def _shipped(*path: str) -> Any:
    """The value the shipped configs give a key (Hydra's composition, unresolved)."""
    value: Any = _composed()
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


_COMPOSED: dict[str, Any] = {}


def _composed(name: str = "config") -> dict[str, Any]:
    if name not in _COMPOSED:
        from hydra import compose, initialize_config_module
        from omegaconf import OmegaConf

        with initialize_config_module(config_module="flows.conf", version_base="1.3"):
            cfg = compose(config_name=name)
        _COMPOSED[name] = OmegaConf.to_container(cfg, resolve=False)
    return _COMPOSED[name]


def _default(field: Any, path: tuple[str, ...]) -> str:
    default = "required" if field.is_required() else _yaml(field.get_default())
    shipped = _shipped(*path)
    if shipped is None or (not field.is_required() and _yaml(shipped) == default):
        return default
    shown = _yaml(shipped)
    if len(shown) > 60:
        shown = "set"
    return f"{default} (shipped: {shown})"


def _section_table(model: type, prefix: tuple[str, ...]) -> list[str]:
    lines = ["| key | type | default | rule | meaning |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
            doc = _inline(" ".join((_attribute_doc(model, name) or "").split()))
            lines.append(f"| `{name}` | section | | | {doc} [Below](#{name}). |")
            continue
        doc = _inline(" ".join((_attribute_doc(model, name) or "").split()))
        if not doc:
            log.warning("config key %s has no docstring in its model", ".".join(path))
        rules = "; ".join(_rules(model, name, field))
        lines.append(
            f"| `{name}` | {_type(field.annotation)} | {_default(field, path)} | {rules} | {doc} |"
        )
    return lines


def _attribute_doc(model: type, name: str) -> str | None:
    """The docstring under a field's declaration (read by griffe, as mkdocstrings does)."""
    obj = _griffe(model.__module__)[model.__qualname__]
    member = obj.members.get(name)
    return member.docstring.value if member is not None and member.docstring else None


_LOADED: dict[str, Any] = {}


def _griffe(package: str) -> Any:
    top = package.split(".")[0]
    if top not in _LOADED:
        import griffe

        _LOADED[top] = griffe.load(top, search_paths=[str(REPO)], resolve_aliases=False)
    obj = _LOADED[top]
    for part in package.split(".")[1:]:
        obj = obj[part]
    return obj


def _groups() -> str:
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))
    defaults = {
        next(iter(d)): d[next(iter(d))]
        for d in __import__("yaml").safe_load((CONF / "config.yaml").read_text())["defaults"]
        if isinstance(d, dict)
    }
    rows = [
        f"| `{g}` | `{defaults.get(g, '')}` | "
        + ", ".join(f"`{p.stem}`" for p in sorted((CONF / g).glob("*.yaml")))
        + " |"
        for g in groups
    ]
    return "\n".join(["| group | default | configs |", "|---|---|---|", *rows])


def _serve_keys() -> list[str]:
    """The keys ``flows/conf/serve.yaml`` adds for ``eeipu serve``, with its comments."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for line in (CONF / "serve.yaml").read_text().splitlines():
        match = re.match(r"^([a-z_]+):\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if match and match.group(1) != "defaults":
            key, value, comment = match.groups()
            lines.append(f"| `{key}` | `{value}` | {_inline(comment or '')} |")
    return lines


def _method_options() -> list[str]:
    from eeipu import METHOD_OPTIONS

    methods = sorted(METHOD_OPTIONS)
    table: dict[str, dict[str, str]] = {}
    types_: dict[str, str] = {}
    for method in methods:
        kind = METHOD_OPTIONS[method]
        for f in dataclasses.fields(kind) if kind else ():
            default = f.default if f.default is not dataclasses.MISSING else "required"
            table.setdefault(f.name, {})[method] = _yaml(default)
            annotation = f.type if isinstance(f.type, str) else _type(f.type)
            types_[f.name] = annotation.replace("None", "null").replace(" | ", " \\| ")
    lines = [
        "| option | type | " + " | ".join(f"`{m}`" for m in methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for option in sorted(table):
        cells = " | ".join(table[option].get(m, "") for m in methods)
        lines.append(f"| `{option}` | {types_[option]} | {cells} |")
    return lines


def configuration_page() -> str:
    from flows import StudyConfig

    sections = [
        (name, field.annotation)
        for name, field in StudyConfig.model_fields.items()
        if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")
    ]
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from flows/_config.py and flows/conf by docs/hooks/reference.py. -->",
        "",
        "A study's configuration is Hydra YAML (`flows/conf/config.yaml` and the config groups "
        "below), overridden on the command line (`eeipu tune budget=100 optimizer=ei`) and "
        "validated once into [`flows.StudyConfig`][flows.StudyConfig] before anything runs. "
        "Each section of the YAML is a frozen model: an unknown key is refused (with the "
        "closest valid key), a `null` where a value is required counts as missing, and a "
        "broken rule ends the command with one line naming the key and the rule "
        "(`` `budget` must be a positive number, but got -1 ``).",
        "",
        "*default* is the model's; where the shipped YAML (with the default groups) sets "
        "another value, it follows. "
        "A *rule* beyond the type is the validator's own words.",
        "",
        "## Config groups",
        "",
        "A group picks one YAML file for a section: `pipeline=ml_stacking`, `optimizer=ei`, "
        "`storage=s3`; `--config-dir DIR` adds your own (`DIR/pipeline/mine.yaml`).",
        "",
        _groups(),
        "",
        "## The study",
        "",
        *_section_table(StudyConfig, ()),
        "",
    ]
    for name, model in sections:
        out += [
            f"## {name}",
            "",
            f"`{name}.*`: {_inline(' '.join((model.__doc__ or '').split()))}",
            "",
            *_section_table(model, (name,)),
            "",
        ]
    out += [
        "## `eeipu serve`",
        "",
        "`eeipu serve` composes `flows/conf/serve.yaml`: the study's configuration and these "
        "keys (`extra_budget` must be set).",
        "",
        *_serve_keys(),
        "",
        "## Method options",
        "",
        "`optimizer.options` takes the options of the chosen method, and only those "
        "([`eeipu.METHOD_OPTIONS`][eeipu.METHOD_OPTIONS]); the table gives each method's "
        "defaults (blank: the method does not use it). Their meanings are the parameters of "
        "[`CostAwareEI`][eeipu.CostAwareEI] (`ei`, `eips`, `carbo`, `ms_carbo`, `eeipu`), "
        "[`LaMBO`][eeipu.LaMBO] and [`CascadeBO`][eeipu.CascadeBO] (`ms_bo`); "
        "[How EEIPU works](../how-eeipu-works.md) says why the defaults are what they are.",
        "",
        *_method_options(),
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------- CLI
def _help(*args: str) -> str:
    """``eeipu ARGS`` output, run as a user runs it (in an empty folder, 100 columns)."""
    env = {**os.environ, "COLUMNS": "100", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=120,
        )
    if done.returncode != 0:
        log.warning("`eeipu %s` exited with %d: %s", " ".join(args), done.returncode, done.stderr)
    return done.stdout.rstrip()


def cli_page() -> str:
    from flows.cli import COMMANDS

    out = [
        "# CLI reference",
        "",
        "<!-- Generated from the commands' own --help by docs/hooks/reference.py. -->",
        "",
        "The `eeipu` command (installed with the package; `.venv/bin/eeipu` in the "
        "repository). `tune` and `serve` take Hydra overrides (`key=value`, `-m` for a "
        "multirun, `--config-dir DIR` for your own configs): their keys are in the "
        "[configuration reference](configuration.md); their `--help` prints the composed "
        "default configuration. [Running and inspecting studies](../studies.md) shows the "
        "commands at work.",
        "",
        "```text",
        "$ eeipu --help",
        _help("--help"),
        "```",
        "",
    ]
    for command, (summary, _) in COMMANDS.items():
        out += [
            f"## eeipu {command}",
            "",
            f"{summary[0].upper()}{summary[1:]}.",
            "",
            "```text",
            f"$ eeipu {command} --help",
            _help(command, "--help"),
            "```",
            "",
        ]
    return "\n".join(out)


# ---------------------------------------------------------------------- API
_KINDS = (("class", "Classes"), ("function", "Functions"), ("attribute", "Constants"))


def api_page(package: str) -> str:
    import importlib

    names = list(importlib.import_module(package).__all__)
    module = _griffe(package)
    by_kind: dict[str, list[str]] = {kind: [] for kind, _ in _KINDS}
    for name in names:
        if name not in module.members:
            log.warning("%s.__all__ names %r, which the module does not import", package, name)
            continue
        target = module[name]
        target = target.final_target if target.is_alias else target
        if not target.docstring:
            log.warning("%s.%s (%s) has no docstring", package, name, target.path)
        by_kind.setdefault(target.kind.value, []).append(name)
    out = [
        f"# `{package}`",
        "",
        f"<!-- Generated from {package}.__all__ by docs/hooks/reference.py. -->",
        "",
        f"::: {package}",
        "    options:",
        "      members: false",
        "      show_root_heading: false",
        "",
    ]
    for kind, title in _KINDS:
        if by_kind.get(kind):
            out += [f"## {title}", ""]
            out += [f"::: {package}.{name}\n" for name in by_kind[kind]]
    return "\n".join(out)
