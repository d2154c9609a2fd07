"""The literature's language pipeline: a T5 teacher distilled into a smaller student.

Task: **which standard-library package does this docstring come from?**, as text-to-text
(the way T5 casts classification: the answer is generated, byte by byte). The inputs are the
docstrings of the installed Python standard library, read offline without importing
anything: a fixed, sorted list of stdlib source files is parsed with :mod:`ast`, and every
function, method or class whose cleaned docstring has at least 20 characters gives one
example, *input* = the docstring with its whitespace collapsed, *target* = the top-level
package or module name (``asyncio``, ``tkinter``, ``email``, ``_pydecimal``: 118 targets on
Python 3.11). The model has to read prose and identifiers ("widget", "mailbox", "coroutine")
and name where they live; the trivial predictions (a constant, the input itself, the most
frequent target) score low under ROUGE (:func:`baselines`). The corpus is in file then
:func:`ast.walk` order (deterministic for a Python version, which is part of the ``data``
stage's version); the train/validation split is a permutation drawn from ``seed``. Texts are
byte-level (``ByT5Tokenizer()``, which needs no downloaded files); inputs are cut to
``max_input_len`` bytes, so how much of a docstring is read trades cost for quality.

Models: ``T5ForConditionalGeneration`` built from a small ``T5Config`` (no hub access). The
teacher starts from a seeded random initialization; the student is the teacher with every
other block dropped (DistilBERT's initialization, Sanh et al. 2019).

Stages (a chain; each student also reads the data and the teacher):

0. ``data``: build, split and tokenize the corpus (``batch_size``, ``max_input_len``).
1. ``teacher``: train the teacher with AdamW (``lr``, ``weight_decay``, both log scale).
2. ``student1``: initialize the student from the teacher and distill the teacher into it
   (``lr``, ``temperature``, ``weight_decay``, ``alpha``); loss = (1 - alpha) * cross-entropy
   on the target + alpha * T^2 * KL(teacher || student) on temperature-softened token
   distributions (Hinton et al. 2015). ``alpha = 0`` trains on the targets alone.
3. ``student2``: continue distilling from student1's checkpoint (same parameters).
4. ``student3``: continue from student2's checkpoint, then decode the validation set
   greedily and return ``{"rougeLsum": mean F-measure}`` (``rouge-score``; the targets are
   one line, so ROUGE-Lsum is ROUGE-L on the name's parts).

With ``student_labels < 1`` (default 1) the students see the targets of only that fraction
of the training examples and the rest through the distillation term alone (the teacher's
greedy decodes as decoder inputs); measured, it did not make distillation pay either. With
``label_noise > 0`` (default 0) that fraction of the training targets (teacher and students
alike) is replaced by other module names; measured, distillation did not pay there either.

Checkpoints travel between stages as ``torch.save`` bytes of the ``state_dict`` (on the
CPU), so they live in the cache store. Sizes:

- ``smoke``: 7 stdlib files, 16 train / 8 validation examples, teacher d_model 32 (2+2
  layers), student 1+1 layers, one optimizer step per stage, 8 decoded bytes: a trial in a
  fraction of a second of stage time (tests).
- ``full``: 4,096 train / 384 validation examples, teacher d_model 64 (d_ff 256, 2+2 layers,
  4 heads, 10 epochs), student 1+1 layers (2 epochs per stage): on one CPU thread the
  teacher takes about 80 s at the middle of the space, each student stage about 15 s.
- ``gpu`` (``device="cuda"`` only): every stdlib source file except tests, 6,144 train /
  1,024 validation, teacher d_model 384 (d_ff 1536, 4+4 layers, 8 heads, 8 epochs), student
  2+2 layers, batches 8x the ``batch_size`` parameter.

Objective: validation ROUGE-Lsum of the final student, in [0, 1] (maximize).
:func:`baselines` scores the trivial predictions (constant, copy, most frequent target) on
the same validation set.

Stage timings, baselines, the Sobol spread and distilled against targets-alone students
(``--distill-sweep``; docs/pipelines/t5_distill.md): ``python -m t5_distill
--help``.

Example:
    >>> from t5_distill import t5_distill_pipeline
    >>> pipe = t5_distill_pipeline(size="smoke")
    >>> pipe.stage_names
    ['data', 'teacher', 'student1', 'student2', 'student3']
"""

from __future__ import annotations

import ast
import collections
import contextlib
import inspect
import io
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from stages import Pipeline, Stage

__all__ = ["T5_DISTILL_SPACE", "baselines", "t5_distill_pipeline"]


# Each example carries its own copy: a copy of one example folder needs nothing else.
@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: leave as is), then restore.

    The setting is process-wide, so it is held only while a stage runs. Small models on a
    busy 2-core machine train many times faster on one thread than on two spinning ones.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Source files (relative to the stdlib folder, without ".py"), in a fixed sorted order.
_MODULES = (
    "_collections_abc",
    "_pydecimal",
    "_pyio",
    "_strptime",
    "abc",
    "argparse",
    "ast",
    "asyncio/base_events",
    "asyncio/events",
    "asyncio/locks",
    "asyncio/selector_events",
    "asyncio/streams",
    "asyncio/tasks",
    "base64",
    "bdb",
    "bisect",
    "calendar",
    "cmd",
    "code",
    "codecs",
    "codeop",
    "collections/__init__",
    "concurrent/futures/_base",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "difflib",
    "dis",
    "doctest",
    "email/_header_value_parser",
    "email/header",
    "email/message",
    "email/utils",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "genericpath",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "heapq",
    "hmac",
    "http/client",
    "http/cookiejar",
    "http/server",
    "idlelib/editor",
    "imaplib",
    "importlib/_bootstrap_external",
    "importlib/metadata/__init__",
    "inspect",
    "ipaddress",
    "json/decoder",
    "json/encoder",
    "linecache",
    "locale",
    "logging/__init__",
    "logging/handlers",
    "mailbox",
    "mimetypes",
    "multiprocessing/connection",
    "multiprocessing/pool",
    "netrc",
    "ntpath",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "posixpath",
    "pprint",
    "profile",
    "pstats",
    "pydoc",
    "queue",
    "random",
    "reprlib",
    "runpy",
    "sched",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "signal",
    "site",
    "smtplib",
    "socket",
    "socketserver",
    "ssl",
    "stat",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "symtable",
    "sysconfig",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tkinter/__init__",
    "tokenize",
    "trace",
    "traceback",
    "turtle",
    "types",
    "typing",
    "unittest/case",
    "unittest/mock",
    "urllib/parse",
    "urllib/request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "xml/dom/minidom",
    "xml/etree/ElementTree",
    "zipapp",
    "zipfile",
    "zipimport",
)

# The search space (keep conf/pipeline/t5_distill.yaml identical).
_STUDENT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "temperature": {"type": "float", "low": 1.0, "high": 8.0},
    "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "alpha": {"type": "float", "low": 0.0, "high": 1.0},
}
T5_DISTILL_SPACE: dict[str, dict[str, dict[str, Any]]] = {
    "data": {
        "batch_size": {"type": "int", "low": 8, "high": 64, "log": True},
        "max_input_len": {"type": "int", "low": 32, "high": 128},
    },
    "teacher": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    },
    "student1": dict(_STUDENT_SPACE),
    "student2": dict(_STUDENT_SPACE),
    "student3": dict(_STUDENT_SPACE),
}

_MIN_DOC = 20  # characters of docstring an example needs
_MAX_TARGET_LEN = 20  # bytes of the module name (the longest in _MODULES has 16), plus eos
_EVAL_BATCH = 128


@dataclass(frozen=True)
class _Arch:
    d_model: int
    d_ff: int
    num_layers: int
    num_heads: int


@dataclass(frozen=True)
class _Size:
    modules: tuple[str, ...] | None  # None: every stdlib source file (sorted)
    n_train: int
    n_val: int
    teacher: _Arch
    student: _Arch
    teacher_epochs: int
    student_epochs: int
    max_steps: int | None  # cap on optimizer steps per stage (smoke: 1)
    max_new_tokens: int = _MAX_TARGET_LEN + 1  # bytes decoded for the objective
    batch_scale: int = 1  # the data stage's batch_size is multiplied by this
    cuda_only: bool = False


_SIZES = {
    "smoke": _Size(
        modules=("abc", "base64", "bisect", "calendar", "cmd", "code", "copy"),
        n_train=16,
        n_val=8,
        teacher=_Arch(d_model=32, d_ff=64, num_layers=2, num_heads=2),
        student=_Arch(d_model=32, d_ff=64, num_layers=1, num_heads=2),
        teacher_epochs=1,
        student_epochs=1,
        max_steps=1,
        max_new_tokens=8,
    ),
    "full": _Size(
        modules=_MODULES,
        n_train=4096,
        n_val=384,
        teacher=_Arch(d_model=64, d_ff=256, num_layers=2, num_heads=4),
        student=_Arch(d_model=64, d_ff=256, num_layers=1, num_heads=4),
        teacher_epochs=10,
        student_epochs=2,
        max_steps=None,
    ),
    "gpu": _Size(
        modules=None,
        n_train=6144,
        n_val=1024,
        teacher=_Arch(d_model=384, d_ff=1536, num_layers=4, num_heads=8),
        student=_Arch(d_model=384, d_ff=1536, num_layers=2, num_heads=8),
        teacher_epochs=8,
        student_epochs=2,
        max_steps=None,
        batch_scale=8,
        cuda_only=True,
    ),
}


# ---------------------------------------------------------------------- the factory
def t5_distill_pipeline(
    size: str = "full",
    device: str = "cpu",
    seed: int = 0,
    threads: int | None = 1,
    student_labels: float = 1.0,
    label_noise: float = 0.0,
) -> Pipeline:
    """The T5 distillation pipeline (see the module docstring).

    Args:
        size: ``"smoke"`` (a trial in well under a second, for tests), ``"full"`` (minutes
            on two CPU cores) or ``"gpu"`` (a larger teacher and all the stdlib; needs
            ``device="cuda"``).
        device: ``"cpu"``, or ``"cuda"`` where ``torch.cuda.is_available()``.
        seed: Seeds the data split, every model's initialization and every shuffle.
        threads: Torch CPU threads while a stage runs (restored afterwards); ``None``
            leaves torch's setting alone. The models are tiny, so one thread loses little
            and leaves the other cores to other jobs.
        student_labels: The fraction of the training examples whose targets the students
            see (the first ones of the random split; the teacher always sees them all). The
            other examples reach a student only through the distillation term, with the
            teacher's greedy decodes as decoder inputs (sequence-level, Kim & Rush 2016);
            ``alpha = 0`` then trains on the labelled fraction alone (repeated, so for as many
            optimizer steps). 1.0 (the default): every student sees every target.
        label_noise: The fraction of the *training* targets replaced by another module's
            name (chosen at random among the training targets' other names, seeded), for
            the teacher and the students alike; validation targets stay clean. The setting
            in which a teacher's softened predictions can carry what noisy targets lack.
            0.0 (the default): clean targets.

    Returns:
        The pipeline ``data -> teacher -> student1 -> student2 -> student3``; its sink
        returns ``{"rougeLsum": float}`` and ``metric`` is ``"rougeLsum"``.

    Raises:
        ValueError: A bad ``size``, ``device``, ``seed``, ``threads``, ``student_labels`` or
            ``label_noise``,
            or ``size="gpu"`` without ``device="cuda"`` (before anything runs).

    Example:
        >>> pipe = t5_distill_pipeline(size="smoke", device="cpu", seed=0)
        >>> pipe.metric
        'rougeLsum'
    """
    if size not in _SIZES:
        raise ValueError(f"`size` must be 'smoke', 'full' or 'gpu', but got {size!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "`device` 'cuda' is not available on this machine "
                "(torch.cuda.is_available() is False); use device=cpu"
            )
    elif device != "cpu":
        raise ValueError(f"`device` must be 'cpu' or 'cuda', but got {device!r}")
    if _SIZES[size].cuda_only and device != "cuda":
        raise ValueError(
            f"`size` 'gpu' needs device='cuda', but got device={device!r}; use size=full on a CPU"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, but got {seed!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"`threads` must be a positive integer or None, but got {threads!r}")
    if isinstance(student_labels, bool) or not (
        isinstance(student_labels, int | float) and 0.0 < student_labels <= 1.0
    ):
        raise ValueError(f"`student_labels` must be in (0, 1], but got {student_labels!r}")
    if isinstance(label_noise, bool) or not (
        isinstance(label_noise, int | float) and 0.0 <= label_noise < 1.0
    ):
        raise ValueError(f"`label_noise` must be in [0, 1), but got {label_noise!r}")

    cfg = _SIZES[size]
    run = _Runner(
        cfg, torch.device(device), seed, threads, float(student_labels), float(label_noise)
    )
    # The corpus is the installed stdlib's source: another Python version is other data. size
    # and seed change the split and every model, so they join the version too; every later
    # stage's Merkle key includes this one, so studies of other sizes or seeds never mix.
    # "2": the docstring -> module task (1 was docstring body -> summary line).
    data_version = f"2-{size}-seed{seed}-py{sys.version_info.major}.{sys.version_info.minor}"
    if label_noise:
        data_version += f"-noise{float(label_noise):g}"  # other targets: another data stage
    stages = [
        Stage(run.data, "data", version=data_version, space=T5_DISTILL_SPACE["data"]),
        Stage(
            run.teacher, "teacher", inputs=("data",), version="2", space=T5_DISTILL_SPACE["teacher"]
        ),
    ]
    for k in (1, 2, 3):
        inputs = ("data", "teacher", *((f"student{k - 1}",) if k > 1 else ()))
        space = T5_DISTILL_SPACE[f"student{k}"]
        # Fewer labels are other students: their own cache keys.
        version = "2" if student_labels == 1.0 else f"2-labels{float(student_labels):g}"
        stages.append(
            Stage(run.student(k), f"student{k}", inputs=inputs, version=version, space=space)
        )
    return Pipeline(stages, metric="rougeLsum")


# ---------------------------------------------------------------------- the stages
class _Runner:
    """The stage functions, bound to one size, device, seed, thread count and fraction of
    the targets the students see."""

    def __init__(
        self,
        cfg: _Size,
        device: torch.device,
        seed: int,
        threads: int | None,
        student_labels: float = 1.0,
        label_noise: float = 0.0,
    ):
        self.cfg, self.device, self.seed, self.threads = cfg, device, seed, threads
        self.student_labels = student_labels
        self.label_noise = label_noise

    def data(self, batch_size: int, max_input_len: int) -> dict[str, Any]:
        """Stage 0: the tokenized split. Tensors stay on the CPU (they are cached)."""
        from transformers import ByT5Tokenizer

        cfg = self.cfg
        examples = _corpus(cfg.modules if cfg.modules is not None else _all_modules())
        need = cfg.n_train + cfg.n_val
        if len(examples) < need:
            raise RuntimeError(
                f"the stdlib corpus has {len(examples)} examples, fewer than the {need} needed"
            )
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.seed))
        picked = [examples[i] for i in order[:need].tolist()]
        train, val = picked[: cfg.n_train], picked[cfg.n_train :]
        if self.label_noise:
            train = _noisy_targets(train, self.label_noise, self.seed)
        tok = ByT5Tokenizer()

        def encode(texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
            enc = tok(
                texts, max_length=max_length, truncation=True, padding=True, return_tensors="pt"
            )
            return enc.input_ids, enc.attention_mask

        train_x, train_mask = encode([doc for doc, _ in train], max_input_len)
        train_y, train_ymask = encode([mod for _, mod in train], _MAX_TARGET_LEN + 1)
        val_x, val_mask = encode([doc for doc, _ in val], max_input_len)
        return {
            "batch_size": int(batch_size) * cfg.batch_scale,
            "train_x": train_x,  # n_train x L_in byte ids (0 = pad, 1 = eos)
            "train_mask": train_mask,
            "train_y": train_y.masked_fill(train_ymask == 0, -100),  # n_train x L_out
            "val_x": val_x,
            "val_mask": val_mask,
            "train_refs": [mod for _, mod in train],
            "val_inputs": tok.batch_decode(val_x, skip_special_tokens=True),  # as truncated
            "val_refs": [mod for _, mod in val],
        }

    def teacher(self, data: Mapping[str, Any], lr: float, weight_decay: float) -> bytes:
        """Stage 1: train the teacher from scratch; returns its checkpoint bytes."""
        with _torch_threads(self.threads):
            model = _new_model(self.cfg.teacher, self.seed, self.device)
            _train(
                model,
                data,
                lr=lr,
                weight_decay=weight_decay,
                epochs=self.cfg.teacher_epochs,
                max_steps=self.cfg.max_steps,
                seed=self.seed + 1,
                device=self.device,
            )
            return _to_bytes(model)

    def student(self, k: int) -> Callable[..., Any]:
        """Stage 1 + k: distill into the student (k = 1 starts it, 3 also evaluates)."""
        previous = f"student{k - 1}"

        def run(
            data: Mapping[str, Any],
            teacher: bytes,
            lr: float,
            temperature: float,
            weight_decay: float,
            alpha: float,
            **upstream: bytes,
        ) -> bytes | dict[str, float]:
            with _torch_threads(self.threads):
                teacher_model = _load_model(self.cfg.teacher, teacher, self.device)
                if k == 1:
                    student = _student_from_teacher(self.cfg, teacher_model)
                else:
                    student = _load_model(self.cfg.student, upstream[previous], self.device)
                data_k, labelled = self._student_data(data, teacher_model, alpha)
                _train(
                    student,
                    data_k,
                    lr=lr,
                    weight_decay=weight_decay,
                    epochs=self.cfg.student_epochs,
                    max_steps=self.cfg.max_steps,
                    seed=self.seed + 2 + k,
                    device=self.device,
                    teacher=teacher_model,
                    temperature=temperature,
                    alpha=alpha,
                    labelled=labelled,
                )
                if k < 3:
                    return _to_bytes(student)
                return {"rougeLsum": _score(student, data, self.device, self.cfg.max_new_tokens)}

        # The real signature, so the Stage checks inputs and the YAML's parameters against it.
        kw = inspect.Parameter.KEYWORD_ONLY
        names = ["data", "teacher", *([previous] if k > 1 else []), *_STUDENT_SPACE]
        run.__signature__ = inspect.Signature([inspect.Parameter(n, kw) for n in names])  # type: ignore[attr-defined]
        run.__name__ = run.__qualname__ = f"t5_student{k}"
        return run

    def _student_data(
        self, data: Mapping[str, Any], teacher: torch.nn.Module, alpha: float
    ) -> tuple[Mapping[str, Any], torch.Tensor | None]:
        """The training data a student sees, and which of its rows carry true targets
        (None: all). With ``student_labels < 1`` the first fraction of the rows keep their
        targets; the others get the teacher's greedy decodes (distilled only) or, with
        ``alpha = 0``, are replaced by repeats of the labelled rows (targets alone, as many
        optimizer steps as a distilled student)."""
        n = data["train_x"].shape[0]
        n_labelled = max(1, round(self.student_labels * n))
        if n_labelled >= n:
            return data, None
        if alpha <= 0.0:
            reps = -(-n // n_labelled)
            tiled = {k: data[k][:n_labelled].repeat(reps, 1)[:n] for k in _TRAIN_KEYS}
            return {**data, **tiled}, None
        decodes = _greedy_targets(
            teacher, data["train_x"][n_labelled:], data["train_mask"][n_labelled:], self.device
        )
        y = data["train_y"]
        width = max(y.shape[1], decodes.shape[1])
        y = torch.cat([_pad_right(y[:n_labelled], width), _pad_right(decodes, width)])
        labelled = torch.arange(n) < n_labelled  # n
        return {**data, "train_y": y}, labelled


# ---------------------------------------------------------------------- helpers
_TRAIN_KEYS = ("train_x", "train_mask", "train_y")


def _noisy_targets(
    examples: list[tuple[str, str]], fraction: float, seed: int
) -> list[tuple[str, str]]:
    """Symmetric label noise on (docstring, module) pairs: ``round(fraction * n)`` of them,
    chosen at random, get one of the *other* module names among ``examples``, drawn
    uniformly (seeded by ``seed``; deterministic)."""
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    names = sorted({mod for _, mod in examples})
    if len(names) < 2:
        return examples
    out = list(examples)
    rows = torch.randperm(len(out), generator=gen)[: round(fraction * len(out))]
    offsets = torch.randint(1, len(names), (len(rows),), generator=gen)
    for row, offset in zip(rows.tolist(), offsets.tolist(), strict=True):
        doc, mod = out[row]
        out[row] = (doc, names[(names.index(mod) + offset) % len(names)])
    return out


def _pad_right(y: torch.Tensor, width: int) -> torch.Tensor:
    """``y`` (n x L) padded with -100 (ignored) to n x ``width``."""
    return F.pad(y, (0, width - y.shape[1]), value=-100)


@torch.no_grad()
def _greedy_targets(
    teacher: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The teacher's greedy decodes of ``x`` as targets: n x L byte ids, -100 after eos."""
    teacher.eval()
    out = []
    for start in range(0, x.shape[0], _EVAL_BATCH):
        ids = teacher.generate(
            input_ids=x[start : start + _EVAL_BATCH].to(device),
            attention_mask=mask[start : start + _EVAL_BATCH].to(device),
            max_new_tokens=_MAX_TARGET_LEN + 1,
            do_sample=False,
            num_beams=1,
        )[:, 1:].cpu()  # drop the decoder start id
        out.append(_pad_right(ids.masked_fill(ids == 0, -100), _MAX_TARGET_LEN + 1))
    return torch.cat(out)


def _module_name(name: str) -> str:
    """The top-level name: ``"asyncio/base_events"`` -> ``"asyncio"``."""
    return name.split("/")[0]


def _all_modules() -> tuple[str, ...]:
    """Every stdlib source file except tests and vendored packages, sorted (size ``gpu``)."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), root)
                found.append(rel[: -len(".py")].replace(os.sep, "/"))
    return tuple(sorted(found))


def _corpus(modules: tuple[str, ...]) -> list[tuple[str, str]]:
    """(docstring, module) pairs from the stdlib sources, in file then ``ast.walk`` order."""
    root = sysconfig.get_paths()["stdlib"]
    examples: list[tuple[str, str]] = []
    for name in modules:
        path = os.path.join(root, *name.split("/")) + ".py"
        if not os.path.exists(path):  # absent from this Python version
            continue
        with open(path, encoding="utf-8") as fh:
            try:
                tree = ast.parse(fh.read(), filename=path)
            except (SyntaxError, ValueError):  # a few stdlib files are deliberately invalid
                continue
        target = _module_name(name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= _MIN_DOC and len(target.encode()) <= _MAX_TARGET_LEN:
                examples.append((" ".join(doc.split()), target))
    return examples


def _config(arch: _Arch) -> Any:
    from transformers import T5Config

    return T5Config(
        vocab_size=384,  # ByT5: 3 special ids + 256 bytes + 125 sentinels
        d_model=arch.d_model,
        d_ff=arch.d_ff,
        d_kv=arch.d_model // arch.num_heads,
        num_layers=arch.num_layers,
        num_decoder_layers=arch.num_layers,
        num_heads=arch.num_heads,
        dropout_rate=0.0,  # no dropout: training draws no random numbers after init
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _new_model(arch: _Arch, seed: int, device: torch.device) -> torch.nn.Module:
    from transformers import T5ForConditionalGeneration

    # Seed the initialization without touching the caller's global RNG state.
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(_config(arch))
    return model.to(device)


def _student_from_teacher(cfg: _Size, teacher: torch.nn.Module) -> torch.nn.Module:
    """The student: the teacher with every ``stride``-th block kept (DistilBERT's
    initialization, Sanh et al. 2019), embeddings and final norms shared."""
    from transformers import T5ForConditionalGeneration

    stride = cfg.teacher.num_layers // cfg.student.num_layers
    state = {}
    for name, value in teacher.state_dict().items():
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == "block":  # encoder.block.<i>. ...
            i = int(parts[2])
            if i % stride:
                continue
            parts[2] = str(i // stride)
        state[".".join(parts)] = value
    student = T5ForConditionalGeneration(_config(cfg.student))
    student.load_state_dict(state)  # strict: every student weight comes from the teacher
    return student.to(next(teacher.parameters()).device)


def _load_model(arch: _Arch, blob: bytes, device: torch.device) -> torch.nn.Module:
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration(_config(arch))
    state = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device)


def _to_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def _train(
    model: torch.nn.Module,
    data: Mapping[str, Any],
    *,
    lr: float,
    weight_decay: float,
    epochs: int,
    max_steps: int | None,
    seed: int,
    device: torch.device,
    teacher: torch.nn.Module | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    labelled: torch.Tensor | None = None,
) -> None:
    """AdamW on the cross-entropy, mixed with the distillation term when ``teacher`` is given
    (``alpha`` weighs the distillation term, ``1 - alpha`` the cross-entropy). ``labelled``
    (n bools; None: all) marks the rows whose ``train_y`` are true targets: the
    cross-entropy is taken on those rows only, the distillation term on every row."""
    x, mask, y = data["train_x"], data["train_mask"], data["train_y"]
    n, batch_size = x.shape[0], data["batch_size"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)  # CPU generator: shuffles alike on any device
    model.train()
    distill = teacher is not None and alpha > 0.0
    if teacher is not None:
        teacher.eval()
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            if max_steps is not None and steps >= max_steps:
                return
            idx = order[start : start + batch_size]
            xb, mb, yb = x[idx].to(device), mask[idx].to(device), y[idx].to(device)
            out = model(input_ids=xb, attention_mask=mb, labels=yb)
            loss = out.loss
            if labelled is not None:  # the cross-entropy on the true targets only
                y_ce = yb.masked_fill(~labelled[idx, None].to(device), -100)
                ce = F.cross_entropy(out.logits.flatten(0, 1), y_ce.flatten(), reduction="sum")
                loss = ce / (y_ce != -100).sum().clamp_min(1)
            if distill:
                with torch.no_grad():
                    t_logits = teacher(input_ids=xb, attention_mask=mb, labels=yb).logits
                kd = _kd_loss(out.logits, t_logits, yb != -100, temperature)
                loss = (1.0 - alpha) * loss + alpha * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            steps += 1


def _kd_loss(
    s_logits: torch.Tensor, t_logits: torch.Tensor, keep: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), averaged over target tokens (Hinton et al. 2015).

    ``s_logits``, ``t_logits``: batch x L_out x vocab; ``keep``: batch x L_out (not pad).
    """
    log_p_s = F.log_softmax(s_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(t_logits / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # batch x L_out
    keep = keep.to(kl.dtype)
    return temperature**2 * (kl * keep).sum() / keep.sum().clamp_min(1.0)


def _rouge(preds: list[str], refs: list[str]) -> float:
    """Mean ROUGE-Lsum F-measure of ``preds`` against ``refs`` (``rouge-score``)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeLsum"])
    scores = [scorer.score(r, p)["rougeLsum"].fmeasure for p, r in zip(preds, refs, strict=True)]
    return sum(scores) / len(scores)


@torch.no_grad()
def _predict(
    model: torch.nn.Module, data: Mapping[str, Any], device: torch.device, max_new_tokens: int
) -> list[str]:
    """Greedy decodes of the validation inputs."""
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    model.eval()
    x, mask = data["val_x"], data["val_mask"]
    preds: list[str] = []
    for start in range(0, x.shape[0], _EVAL_BATCH):
        out = model.generate(
            input_ids=x[start : start + _EVAL_BATCH].to(device),
            attention_mask=mask[start : start + _EVAL_BATCH].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
        preds += tok.batch_decode(out.cpu(), skip_special_tokens=True)
    return preds


def _score(
    model: torch.nn.Module, data: Mapping[str, Any], device: torch.device, max_new_tokens: int
) -> float:
    return _rouge(_predict(model, data, device, max_new_tokens), data["val_refs"])


def baselines(data: Mapping[str, Any]) -> dict[str, float]:
    """Validation ROUGE-Lsum of trivial predictions, from the ``data`` stage's output.

    ``constant``: the single word that scores best on the training targets; ``copy``: the
    (truncated) input itself; ``most_frequent``: the most frequent training target.

    Example:
        >>> pipe = t5_distill_pipeline(size="smoke")
        >>> sorted(baselines(pipe["data"](batch_size=8, max_input_len=64)))
        ['constant', 'copy', 'most_frequent']
    """
    train, val = data["train_refs"], data["val_refs"]
    words = collections.Counter(w for ref in train for w in ref.replace(".", " ").split())
    # Candidates: the 20 most frequent name parts; pick on the training targets only.
    constant = max(
        (w for w, _ in words.most_common(20)), key=lambda w: _rouge([w] * len(train), train)
    )
    mode = collections.Counter(train).most_common(1)[0][0]
    return {
        "constant": _rouge([constant] * len(val), val),
        "copy": _rouge(list(data["val_inputs"]), val),
        "most_frequent": _rouge([mode] * len(val), val),
    }


# ---------------------------------------------------------------------- measurements
_STUDENT_A = {"lr": 3e-3, "temperature": 2.0, "weight_decay": 1e-3, "alpha": 0.5}
_BENCH_A: dict[str, dict[str, Any]] = {
    "data": {"batch_size": 16, "max_input_len": 128},
    "teacher": {"lr": 3e-3, "weight_decay": 1e-3},
    **{f"student{k}": dict(_STUDENT_A) for k in (1, 2, 3)},
}
# Shares data and teacher with A; every student differs.
_BENCH_B = {
    **_BENCH_A,
    **{
        f"student{k}": {"lr": 1e-3, "temperature": 4.0, "weight_decay": 1e-2, "alpha": 0.8}
        for k in (1, 2, 3)
    },
}


def _benchmark(size: str, repeats: int, device: str = "cpu") -> None:
    """Print per-stage seconds of trial A (nothing cached, median over fresh stores) and of
    trial B (data and teacher loaded from A's cache), run as Prefect tasks on a temporary
    local store and Prefect server, exactly as a study runs them."""
    import statistics
    import tempfile

    from prefect.testing.utilities import prefect_test_harness

    from stages import Store, run_pipeline

    pipe = t5_distill_pipeline(size=size, device=device)
    warm = t5_distill_pipeline(size="smoke", device="cpu")
    runs_a, runs_b = [], []
    with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as tmp:
        # Imports and first-call overheads out of the way, outside the measurement.
        run_pipeline(warm, _BENCH_A, Store(os.path.join(tmp, "warm")))
        for r in range(repeats):
            store = Store(os.path.join(tmp, f"run{r}"))
            a = run_pipeline(pipe, _BENCH_A, store)
            b = run_pipeline(pipe, _BENCH_B, store)
            assert not a.cached_stages and b.cached_stages == {"data", "teacher"}
            runs_a.append(a.costs)
            runs_b.append(b.costs)
            print(f"run {r}: A {a.costs} -> {a.objective:.4f}; B {b.costs} -> {b.objective:.4f}")
    med_a = {s: statistics.median(c[s] for c in runs_a) for s in pipe.stage_names}
    med_b = {s: statistics.median(c[s] for c in runs_b) for s in pipe.stage_names}
    print(f"| stage | {size}: ran (s) | {size}: in trial B (s) |")
    for s in pipe.stage_names:
        print(f"| {s} | {med_a[s]:.2f} | {med_b[s]:.2f} |")
    print(f"| total | {sum(med_a.values()):.2f} | {sum(med_b.values()):.2f} |")


def _middle() -> dict[str, dict[str, Any]]:
    """The centre of the search space (geometric mean on log scales)."""
    out: dict[str, dict[str, Any]] = {}
    for stage, section in T5_DISTILL_SPACE.items():
        out[stage] = {}
        for name, spec in section.items():
            lo, hi = spec["low"], spec["high"]
            mid = (lo * hi) ** 0.5 if spec.get("log") else (lo + hi) / 2
            out[stage][name] = round(mid) if spec["type"] == "int" else float(mid)
    return out


def _timed(func: Callable[..., Any], **kwargs: Any) -> tuple[Any, float]:
    import time

    start = time.perf_counter()
    out = func(**kwargs)
    return out, time.perf_counter() - start


def _run_direct(
    pipe: Pipeline, params: Mapping[str, Mapping[str, Any]], values: dict[str, Any]
) -> dict[str, float]:
    """Run the stages not yet in ``values`` in order (no Prefect, no cache); their seconds."""
    seconds = {}
    for stage in pipe.stages:
        if stage.output in values:
            continue
        kwargs = {i: values[i] for i in stage.inputs} | dict(params[stage.name])
        values[stage.output], seconds[stage.name] = _timed(stage.func, **kwargs)
    return seconds


def _learning(size: str, device: str) -> None:
    """Baselines, the teacher and the final student at the middle of the space, and the same
    students with other distillation settings (``alpha = 0``: targets alone)."""
    pipe = t5_distill_pipeline(size=size, device=device)
    cfg, dev = _SIZES[size], torch.device(device)
    mid = _middle()
    print(f"middle of the space: {mid}")
    values: dict[str, Any] = {}
    seconds = _run_direct(pipe, mid, values)
    data = values["data"]
    print("| prediction | validation ROUGE-Lsum | stage seconds |\n|---|---:|---:|")
    for name, value in baselines(data).items():
        print(f"| baseline: {name} | {value:.4f} | |")
    teacher = _load_model(cfg.teacher, values["teacher"], dev)
    print(
        f"| teacher | {_score(teacher, data, dev, cfg.max_new_tokens):.4f} | {seconds['teacher']:.1f} |"
    )
    print(f"| final student (student3) | {values['student3']['rougeLsum']:.4f} | ", end="")
    print(" + ".join(f"{seconds[f'student{k}']:.1f}" for k in (1, 2, 3)) + " |", flush=True)
    print(f"(data stage {seconds['data']:.1f} s)")
    print("\n| students' alpha | temperature | final student ROUGE-Lsum |\n|---:|---:|---:|")
    mid_student = mid["student1"]
    print(f"| {mid_student['alpha']:.2f} | {mid_student['temperature']:.2f} | ", end="")
    print(f"{values['student3']['rougeLsum']:.4f} |", flush=True)
    for alpha, temperature in [(0.0, 4.5), (0.5, 1.0), (0.9, 4.5)]:
        student = {**mid_student, "alpha": alpha, "temperature": temperature}
        score, _ = _student_chain(pipe, mid, values, student)
        print(f"| {alpha:.2f} | {temperature:.2f} | {score:.4f} |", flush=True)


def _student_chain(
    pipe: Pipeline,
    params: Mapping[str, Mapping[str, Any]],
    values: Mapping[str, Any],
    student: Mapping[str, Any],
) -> tuple[float, float]:
    """Rerun student1-3, all with the parameters ``student``, on the data and teacher in
    ``values``; the final student's ROUGE-Lsum and the three stages' seconds."""
    again = {"data": values["data"], "teacher": values["teacher"]}
    seconds = _run_direct(pipe, {**params, **{f"student{k}": student for k in (1, 2, 3)}}, again)
    return again["student3"]["rougeLsum"], sum(seconds.values())


def _distill_sweep(
    size: str,
    device: str,
    seed: int,
    overrides: Mapping[str, Mapping[str, Any]],
    student_lrs: list[float],
    settings: list[tuple[float, float]],
    student_labels: float = 1.0,
    label_noise: float = 0.0,
) -> None:
    """One data split and one teacher (the middle of the space with ``overrides``), then the
    student chain for every student ``lr`` x (``alpha``, ``temperature``) in ``settings``;
    each distilled row is compared with ``alpha = 0`` (targets alone) at the same ``lr``.
    ``student_labels``, ``label_noise``: as in :func:`t5_distill_pipeline`."""
    pipe = t5_distill_pipeline(
        size=size,
        device=device,
        seed=seed,
        student_labels=student_labels,
        label_noise=label_noise,
    )
    cfg, dev = _SIZES[size], torch.device(device)
    params = _middle()
    for stage, section in overrides.items():
        params[stage] = {**params[stage], **section}
    print(
        f"seed {seed}; data {params['data']}; teacher {params['teacher']}; "
        f"students see {student_labels:g} of the targets; {label_noise:g} of the training "
        "targets are noisy"
    )
    values: dict[str, Any] = {}
    for stage in ("data", "teacher"):
        kwargs = {i: values[i] for i in pipe[stage].inputs} | dict(params[stage])
        values[stage], seconds = _timed(pipe[stage].func, **kwargs)
    teacher = _load_model(cfg.teacher, values["teacher"], dev)
    print(
        f"teacher: ROUGE-Lsum {_score(teacher, values['data'], dev, cfg.max_new_tokens):.4f} "
        f"({seconds:.1f} s)"
    )
    print("\n| student lr | alpha | temperature | final student | minus alpha 0 | seconds |")
    print("|---:|---:|---:|---:|---:|---:|")
    if not any(alpha == 0.0 for alpha, _ in settings):
        settings = [(0.0, 1.0), *settings]  # the reference: targets alone
    settings = sorted(settings, key=lambda s: s[0] != 0.0)  # alpha = 0 first
    for lr in student_lrs:
        alone = None
        for alpha, temperature in settings:
            student = {**params["student1"], "lr": lr, "alpha": alpha, "temperature": temperature}
            score, seconds = _student_chain(pipe, params, values, student)
            alone = score if alpha == 0.0 and alone is None else alone
            print(
                f"| {lr:g} | {alpha:g} | {temperature:g} | {score:.4f} "
                f"| {score - alone:+.4f} | {seconds:.0f} |",
                flush=True,
            )


def _sobol(size: str, device: str, n: int, seed: int) -> None:
    """Run ``n`` scrambled-Sobol configurations of the space (the stage functions directly):
    one row each, then min / median / max of the final objective."""
    import statistics

    from torch.quasirandom import SobolEngine

    from eeipu import SearchSpace

    pipe = t5_distill_pipeline(size=size, device=device)
    space = SearchSpace.from_dict(T5_DISTILL_SPACE)
    X = SobolEngine(space.dim, scramble=True, seed=seed).draw(n, dtype=torch.double)  # n x d
    print("| # | batch | max_in | teacher lr | s1 lr | s1 alpha | s1 T | seconds | ROUGE-Lsum |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    objectives = []
    for i, x in enumerate(X):
        params = space.decode(x)
        values: dict[str, Any] = {}
        seconds = _run_direct(pipe, params, values)
        objectives.append(values["student3"]["rougeLsum"])
        d, t, s = params["data"], params["teacher"], params["student1"]
        print(
            f"| {i} | {d['batch_size']} | {d['max_input_len']} | {t['lr']:.2g} | {s['lr']:.2g} "
            f"| {s['alpha']:.2f} | {s['temperature']:.1f} | {sum(seconds.values()):.0f} "
            f"(teacher {seconds['teacher']:.0f}) | {objectives[-1]:.4f} |",
            flush=True,
        )
    print(
        f"\nfinal objective over {n} Sobol configurations: min {min(objectives):.4f}, "
        f"median {statistics.median(objectives):.4f}, max {max(objectives):.4f}"
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Measure the t5_distill pipeline: stage times through Prefect (default), "
        "--learning (baselines, teacher and students at the middle of the space), "
        "--sobol N (N Sobol configurations, stage functions run directly), or "
        "--distill-sweep (one teacher, then the students for each --student-lr and "
        "--pairs alpha:T, each against alpha 0: the same students on the targets alone)."
    )
    parser.add_argument("--size", choices=sorted(_SIZES), default="smoke")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--learning", action="store_true")
    parser.add_argument("--sobol", type=int, default=0, metavar="N")
    parser.add_argument("--sobol-seed", type=int, default=0)
    parser.add_argument("--distill-sweep", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="the pipeline's seed (sweep)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.PARAM=VALUE",
        help="sweep: change the middle of the space for data or teacher (repeatable)",
    )
    parser.add_argument("--student-lr", type=float, nargs="+", default=[1e-3])
    parser.add_argument(
        "--student-labels", type=float, default=1.0, help="sweep: see t5_distill_pipeline"
    )
    parser.add_argument(
        "--label-noise", type=float, default=0.0, help="sweep: see t5_distill_pipeline"
    )
    parser.add_argument(
        "--pairs",
        nargs="+",
        default=["0:1", "0.5:4.5", "0.5:1", "0.9:4.5"],
        metavar="ALPHA:T",
        help="sweep: the students' (alpha, temperature) settings; alpha 0 is always run",
    )
    args = parser.parse_args()
    if args.distill_sweep:
        overrides: dict[str, dict[str, float]] = {}
        for item in args.set:
            key, _, value = item.partition("=")
            stage, _, name = key.partition(".")
            if stage not in ("data", "teacher") or name not in T5_DISTILL_SPACE[stage]:
                parser.error(f"--set takes data.* or teacher.* parameters, but got {item!r}")
            spec = T5_DISTILL_SPACE[stage][name]
            overrides.setdefault(stage, {})[name] = (int if spec["type"] == "int" else float)(value)
        pairs = [tuple(float(v) for v in p.split(":")) for p in args.pairs]
        _distill_sweep(
            args.size,
            args.device,
            args.seed,
            overrides,
            args.student_lr,
            pairs,
            args.student_labels,
            args.label_noise,
        )
    elif args.learning:
        _learning(args.size, args.device)
    elif args.sobol:
        _sobol(args.size, args.device, args.sobol, args.sobol_seed)
    else:
        _benchmark(args.size, args.repeats, args.device)
