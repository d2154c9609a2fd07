"""The literature's language pipeline: a T5 teacher distilled into a smaller student.

Data: docstrings of the installed Python standard library, read offline and without
importing anything. A fixed, sorted list of stdlib source files is parsed with :mod:`ast`;
every function whose cleaned docstring has a one-line summary ending in ``.`` and a body
of at least 40 characters (no doctest) gives one example: input = the docstring body,
target = its summary line. The corpus is in parse order (deterministic for a Python
version, which is part of the ``data`` stage's version); the train/validation split is a
permutation drawn from ``seed``. Texts are byte-level (``ByT5Tokenizer()``, which needs no
downloaded files); inputs are cut to ``max_input_len`` bytes, targets to a fixed cap.

Models: ``T5ForConditionalGeneration`` built from a small ``T5Config`` with seeded random
initialization (no hub access). The student is smaller than the teacher.

Stages (a chain; each student also reads the data and the teacher):

0. ``data``: build, split and tokenize the corpus (``batch_size``, ``max_input_len``).
1. ``teacher``: train the teacher with AdamW (``lr``, ``weight_decay``, both log scale).
2. ``student1``: initialize the student and distill the teacher into it
   (``lr``, ``temperature``, ``weight_decay``); loss = 0.5 * cross-entropy on the target
   + 0.5 * T^2 * KL(teacher || student) on temperature-softened token distributions
   (Hinton et al. 2015).
3. ``student2``: continue distilling from student1's checkpoint (same parameters).
4. ``student3``: continue from student2's checkpoint, then decode the validation set
   greedily and return ``{"rougeLsum": mean F-measure}`` (``rouge-score``).

Checkpoints travel between stages as ``torch.save`` bytes of the ``state_dict`` (on the
CPU), so they live in the cache store. Sizes:

- ``smoke``: 7 stdlib files, 16 train / 8 validation examples, teacher d_model 32 and
  student d_model 16 (1 layer each), one optimizer step per stage, 8 decoded bytes:
  a trial takes a few seconds.
- ``full``: 1024 train / 128 validation examples, teacher d_model 128 (2+2 layers,
  4 heads, 5 epochs), student d_model 64 (2+2 layers, 2 heads, 2 epochs per stage),
  32 decoded bytes: the teacher takes a minute or two on two CPU cores, each student
  stage tens of seconds.

Objective: validation ROUGE-Lsum of the final student, in [0, 1] (maximize).

Stage timings (docs/pipelines/t5_distill.md): ``python -m stages.pipelines.t5_distill --size full``.

Example:
    >>> from stages.pipelines.t5_distill import t5_distill_pipeline
    >>> pipe = t5_distill_pipeline(size="smoke")
    >>> pipe.stage_names
    ['data', 'teacher', 'student1', 'student2', 'student3']
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import sys
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from stages import Pipeline, Stage
from stages.pipelines._threads import torch_threads as _torch_threads

__all__ = ["T5_DISTILL_SPACE", "t5_distill_pipeline"]

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

# The search space (keep flows/conf/pipeline/t5_distill.yaml identical).
_STUDENT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "temperature": {"type": "float", "low": 1.0, "high": 8.0},
    "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
}
T5_DISTILL_SPACE: dict[str, dict[str, dict[str, Any]]] = {
    "data": {
        "batch_size": {"type": "int", "low": 8, "high": 64, "log": True},
        "max_input_len": {"type": "int", "low": 64, "high": 256},
    },
    "teacher": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    },
    "student1": dict(_STUDENT_SPACE),
    "student2": dict(_STUDENT_SPACE),
    "student3": dict(_STUDENT_SPACE),
}

_MAX_TARGET_LEN = 64  # bytes of the summary line the model learns to produce (plus eos)
_DISTILL_ALPHA = 0.5  # weight of the cross-entropy term; 1 - alpha weighs the KL term
_EVAL_BATCH = 64


@dataclass(frozen=True)
class _Arch:
    d_model: int
    d_ff: int
    num_layers: int
    num_heads: int


@dataclass(frozen=True)
class _Size:
    modules: tuple[str, ...]
    n_train: int
    n_val: int
    teacher: _Arch
    student: _Arch
    teacher_epochs: int
    student_epochs: int
    max_steps: int | None  # cap on optimizer steps per stage (smoke: 1)
    max_new_tokens: int


_SIZES = {
    "smoke": _Size(
        modules=("abc", "base64", "bisect", "calendar", "cmd", "code", "copy"),
        n_train=16,
        n_val=8,
        teacher=_Arch(d_model=32, d_ff=64, num_layers=1, num_heads=2),
        student=_Arch(d_model=16, d_ff=32, num_layers=1, num_heads=2),
        teacher_epochs=1,
        student_epochs=1,
        max_steps=1,
        max_new_tokens=8,
    ),
    "full": _Size(
        modules=_MODULES,
        n_train=1024,
        n_val=128,
        teacher=_Arch(d_model=128, d_ff=256, num_layers=2, num_heads=4),
        student=_Arch(d_model=64, d_ff=128, num_layers=2, num_heads=2),
        teacher_epochs=5,
        student_epochs=2,
        max_steps=None,
        max_new_tokens=32,
    ),
}


# ---------------------------------------------------------------------- the factory
def t5_distill_pipeline(
    size: str = "full", device: str = "cpu", seed: int = 0, threads: int | None = 1
) -> Pipeline:
    """The T5 distillation pipeline (see the module docstring).

    Args:
        size: ``"smoke"`` (a trial in seconds, for tests) or ``"full"``.
        device: ``"cpu"``, or ``"cuda"`` where ``torch.cuda.is_available()``.
        seed: Seeds the data split, every model's initialization and every shuffle.
        threads: Torch CPU threads while a stage runs (restored afterwards); ``None``
            leaves torch's setting alone. The models are tiny, so one thread loses little
            and leaves the other cores to other jobs.

    Returns:
        The pipeline ``data -> teacher -> student1 -> student2 -> student3``; its sink
        returns ``{"rougeLsum": float}`` and ``metric`` is ``"rougeLsum"``.

    Raises:
        ValueError: A bad ``size``, ``device``, ``seed`` or ``threads`` (before anything runs).

    Example:
        >>> pipe = t5_distill_pipeline(size="smoke", device="cpu", seed=0)
        >>> pipe.metric
        'rougeLsum'
    """
    if size not in _SIZES:
        raise ValueError(f"`size` must be 'smoke' or 'full', but got {size!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "`device` 'cuda' is not available on this machine "
                "(torch.cuda.is_available() is False); use device=cpu"
            )
    elif device != "cpu":
        raise ValueError(f"`device` must be 'cpu' or 'cuda', but got {device!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, but got {seed!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"`threads` must be a positive integer or None, but got {threads!r}")

    cfg = _SIZES[size]
    run = _Runner(cfg, torch.device(device), seed, threads)
    # The corpus is the installed stdlib's source: another Python version is other data. size
    # and seed change the split and every model, so they join the version too; every later
    # stage's Merkle key includes this one, so studies of other sizes or seeds never mix.
    data_version = f"1-{size}-seed{seed}-py{sys.version_info.major}.{sys.version_info.minor}"
    stages = [
        Stage(run.data, "data", version=data_version, space=T5_DISTILL_SPACE["data"]),
        Stage(run.teacher, "teacher", inputs=("data",), space=T5_DISTILL_SPACE["teacher"]),
        Stage(
            run.student(1),
            "student1",
            inputs=("data", "teacher"),
            space=T5_DISTILL_SPACE["student1"],
        ),
        Stage(
            run.student(2),
            "student2",
            inputs=("data", "teacher", "student1"),
            space=T5_DISTILL_SPACE["student2"],
        ),
        Stage(
            run.student(3),
            "student3",
            inputs=("data", "teacher", "student2"),
            space=T5_DISTILL_SPACE["student3"],
        ),
    ]
    return Pipeline(stages, metric="rougeLsum")


# ---------------------------------------------------------------------- the stages
class _Runner:
    """The stage functions, bound to one size, device, seed and thread count."""

    def __init__(self, cfg: _Size, device: torch.device, seed: int, threads: int | None):
        self.cfg, self.device, self.seed, self.threads = cfg, device, seed, threads

    def data(self, batch_size: int, max_input_len: int) -> dict[str, Any]:
        """Stage 0: the tokenized split. Tensors stay on the CPU (they are cached)."""
        from transformers import ByT5Tokenizer

        cfg = self.cfg
        examples = _corpus(cfg.modules)
        need = cfg.n_train + cfg.n_val
        if len(examples) < need:
            raise RuntimeError(
                f"the stdlib corpus has {len(examples)} examples, fewer than the {need} needed"
            )
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.seed))
        picked = [examples[i] for i in order[:need].tolist()]
        train, val = picked[: cfg.n_train], picked[cfg.n_train :]
        tok = ByT5Tokenizer()

        def encode(texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
            enc = tok(
                texts, max_length=max_length, truncation=True, padding=True, return_tensors="pt"
            )
            return enc.input_ids, enc.attention_mask

        train_x, train_mask = encode([body for body, _ in train], max_input_len)
        train_y, train_ymask = encode([summary for _, summary in train], _MAX_TARGET_LEN + 1)
        val_x, val_mask = encode([body for body, _ in val], max_input_len)
        return {
            "batch_size": int(batch_size),
            "train_x": train_x,  # n_train x L_in byte ids (0 = pad, 1 = eos)
            "train_mask": train_mask,
            "train_y": train_y.masked_fill(train_ymask == 0, -100),  # n_train x L_out
            "val_x": val_x,
            "val_mask": val_mask,
            "val_refs": [summary for _, summary in val],
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
            **upstream: bytes,
        ) -> bytes | dict[str, float]:
            with _torch_threads(self.threads):
                teacher_model = _load_model(self.cfg.teacher, teacher, self.device)
                if k == 1:
                    student = _new_model(self.cfg.student, self.seed + 2, self.device)
                else:
                    student = _load_model(self.cfg.student, upstream[previous], self.device)
                _train(
                    student,
                    data,
                    lr=lr,
                    weight_decay=weight_decay,
                    epochs=self.cfg.student_epochs,
                    max_steps=self.cfg.max_steps,
                    seed=self.seed + 2 + k,
                    device=self.device,
                    teacher=teacher_model,
                    temperature=temperature,
                )
                if k < 3:
                    return _to_bytes(student)
                return {"rougeLsum": _rouge_lsum(student, data, self.cfg, self.device)}

        # The real signature, so the Stage checks inputs and the YAML's parameters against it.
        kw = inspect.Parameter.KEYWORD_ONLY
        names = ["data", "teacher", *([previous] if k > 1 else []), *_STUDENT_SPACE]
        run.__signature__ = inspect.Signature([inspect.Parameter(n, kw) for n in names])  # type: ignore[attr-defined]
        run.__name__ = run.__qualname__ = f"t5_student{k}"
        return run


# ---------------------------------------------------------------------- helpers
def _corpus(modules: tuple[str, ...]) -> list[tuple[str, str]]:
    """(body, summary) pairs from the stdlib sources, in file then ``ast.walk`` order."""
    root = sysconfig.get_paths()["stdlib"]
    examples: list[tuple[str, str]] = []
    for name in modules:
        path = os.path.join(root, *name.split("/")) + ".py"
        if not os.path.exists(path):  # absent from this Python version
            continue
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node, clean=True)
            if not doc:
                continue
            summary, _, body = doc.partition("\n")
            summary, body = summary.strip(), body.strip()
            usable = summary.endswith(".") and len(summary) <= 80 and len(body) >= 40
            if usable and ">>>" not in body:  # doctests are not prose to summarize
                examples.append((body, summary))
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
) -> None:
    """AdamW on the cross-entropy, plus the distillation term when ``teacher`` is given."""
    x, mask, y = data["train_x"], data["train_mask"], data["train_y"]
    n, batch_size = x.shape[0], data["batch_size"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)  # CPU generator: shuffles alike on any device
    model.train()
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
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(input_ids=xb, attention_mask=mb, labels=yb).logits
                loss = _DISTILL_ALPHA * loss + (1 - _DISTILL_ALPHA) * _kd_loss(
                    out.logits, t_logits, yb != -100, temperature
                )
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


@torch.no_grad()
def _rouge_lsum(
    model: torch.nn.Module, data: Mapping[str, Any], cfg: _Size, device: torch.device
) -> float:
    """Mean ROUGE-Lsum F-measure of greedy decodes against the validation summaries."""
    from rouge_score.rouge_scorer import RougeScorer
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    scorer = RougeScorer(["rougeLsum"])
    model.eval()
    x, mask, refs = data["val_x"], data["val_mask"], data["val_refs"]
    scores: list[float] = []
    for start in range(0, x.shape[0], _EVAL_BATCH):
        xb = x[start : start + _EVAL_BATCH].to(device)
        mb = mask[start : start + _EVAL_BATCH].to(device)
        out = model.generate(
            input_ids=xb,
            attention_mask=mb,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
        preds = tok.batch_decode(out.cpu(), skip_special_tokens=True)
        for pred, ref in zip(preds, refs[start : start + _EVAL_BATCH], strict=True):
            scores.append(scorer.score(ref, pred)["rougeLsum"].fmeasure)
    return sum(scores) / len(scores)


# ---------------------------------------------------------------------- timing
_BENCH_A: dict[str, dict[str, Any]] = {
    "data": {"batch_size": 16, "max_input_len": 128},
    "teacher": {"lr": 3e-3, "weight_decay": 1e-3},
    **{f"student{k}": {"lr": 3e-3, "temperature": 2.0, "weight_decay": 1e-3} for k in (1, 2, 3)},
}
# Shares data and teacher with A; every student differs.
_BENCH_B = {
    **_BENCH_A,
    **{f"student{k}": {"lr": 1e-3, "temperature": 4.0, "weight_decay": 1e-2} for k in (1, 2, 3)},
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
    warm = t5_distill_pipeline(size="smoke", device=device)
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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Time the t5_distill stages.")
    parser.add_argument("--size", choices=sorted(_SIZES), default="smoke")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    _benchmark(args.size, args.repeats, args.device)
