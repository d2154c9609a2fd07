"""Outputs for people: results CSV, best configuration YAML, best-vs-cost plot, and the
Prefect artifacts (progress, trials table, best-configuration summary)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from flows.records import Recommended, TrialRecord

__all__ = [
    "artifact_key",
    "best_markdown",
    "best_record",
    "best_so_far",
    "failure_text",
    "output_paths",
    "progress_line",
    "recommended_record",
    "record_of",
    "results_csv",
    "study_summary",
    "trial_rows",
    "write_outputs",
]


def artifact_key(study: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{study}-{what}".lower()).strip("-")


def best_so_far(records: Sequence[TrialRecord], direction: str) -> list[float | None]:
    """Running best objective after each record (None before the first success)."""
    sign = 1.0 if direction == "maximize" else -1.0
    best: float | None = None
    out: list[float | None] = []
    for r in records:
        if (
            r.complete
            and r.objective is not None
            and (best is None or sign * r.objective > sign * best)
        ):
            best = r.objective
        out.append(best)
    return out


def failure_text(record: TrialRecord, limit: int | None = None) -> str:
    """Why a failed trial failed, in one line: ``"train: ValueError: ..."`` (the stage,
    then the exception or ``objective is nan``); ``""`` for a complete trial. Records
    journaled before reasons were kept give their ``error``. ``limit`` caps the length."""
    if record.complete:
        return ""
    reason = record.reason or record.error or "failed"
    stage = record.failed_stage
    text = (f"{stage}: " if stage else "") + " ".join(str(reason).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def trial_rows(records: Sequence[TrialRecord], direction: str) -> list[dict[str, Any]]:
    """One flat row per trial: number, state, objective, best, costs, cached, the failure
    reason, every metric the sink returned (``metric.<name>``), params."""
    rows, spent = [], 0.0
    for r, best in zip(records, best_so_far(records, direction), strict=True):
        spent += r.cost
        row: dict[str, Any] = {
            "trial": r.number,
            "state": r.state,
            "origin": r.origin or "",
            "objective": r.objective,
            "best": best,
            "cost": round(r.cost, 6),
            "cumulative_cost": round(spent, 6),
            "cached": " ".join(r.cached),
            "reason": failure_text(r),
        }
        for name, value in r.metrics.items():
            row[f"metric.{name}"] = value
        for stage, c in r.costs.items():
            row[f"cost.{stage}"] = round(c, 6)
        if r.overhead:
            row["cost.overhead"] = round(r.overhead, 6)
        for stage, section in r.params.items():
            for name, value in section.items():
                row[f"{stage}.{name}"] = value
        rows.append(row)
    return rows


def progress_line(record: TrialRecord, best: float | None, spent: float, budget: float) -> str:
    """A trial's console line; a failed trial's ends with its reason (:func:`failure_text`).
    The percentage is the real one: a study's last trial may overspend its budget."""
    cost = record.cost
    cached = ",".join(record.cached) or "-"
    obj = "FAILED" if record.objective is None else f"{record.objective:.6g}"
    best_s = "-" if best is None else f"{best:.6g}"
    line = (
        f"trial {record.number:>3} | cost {cost:9.4g} | cached {cached:<24} | "
        f"objective {obj:>10} | best {best_s:>10} | spent {spent:.4g}/{budget:.4g} "
        f"({100.0 * spent / budget:.0f}%)"
    )
    return line if obj != "FAILED" else f"{line} | {failure_text(record, limit=300)}"


def best_markdown(
    study: str,
    best: TrialRecord | None,
    spent: float,
    n_trials: int,
    recommended: Recommended | None = None,
) -> str:
    """The best-configuration artifact: the best observed trial and, where given, the
    recommended one (see :func:`recommended_record`)."""
    if best is None:
        return f"# Study `{study}`\n\nNo trial completed ({n_trials} failed)."
    lines = [
        f"# Study `{study}`: best configuration",
        "",
        f"**Objective:** {best.objective:.6g} (trial {best.number}), "
        f"after {n_trials} trials and {spent:.4g} cost units.",
        "",
    ]
    if recommended is not None:
        lines += [
            f"**Recommended** (best posterior mean of the objective model, which discounts "
            f"lucky draws of a noisy metric): trial {recommended.trial}, posterior mean "
            f"{recommended.posterior_mean:.6g}, observed {recommended.objective:.6g}.",
            "",
        ]
    lines += [
        "| stage | parameter | value |",
        "|---|---|---|",
    ]
    for stage, section in best.params.items():
        for name, value in section.items():
            lines.append(f"| {stage} | {name} | {value} |")
    return "\n".join(lines)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``.

    The temporary file is created with mode 0o666 and the kernel applies the umask (and any
    default ACL), so the output gets the mode a plain ``open()`` would give it.
    ``tempfile.mkstemp`` would create it 0o600; reading the umask to fix that up would mean
    setting it (``os.umask`` is process-wide, so racing every other thread's file creation).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def record_of(
    records: Sequence[TrialRecord],
    params: dict[str, dict[str, Any]],
    objective: float | None = None,
) -> TrialRecord | None:
    """The first complete record with these ``params`` (and, if given, this ``objective``);
    None if there is none. Records are matched by configuration, not by trial number: the
    optimizer numbers trials in ask order, the journal in telling order, and a replayed run
    renumbers them."""
    return next(
        (
            r
            for r in records
            if r.complete and r.params == params and (objective is None or r.objective == objective)
        ),
        None,
    )


def recommended_record(
    records: Sequence[TrialRecord], recommendation: tuple[Any, float] | None
) -> Recommended | None:
    """The complete record of ``Optimizer.recommend()``'s trial, as written to
    ``best.yaml`` and the best artifact; None without a recommendation or a matching
    record.

    Matched by configuration: trial numbers differ between a live run and a replayed one.
    """
    if recommendation is None:
        return None
    trial, posterior_mean = recommendation
    rec = record_of(records, trial.params)
    if rec is None:
        return None
    return Recommended(
        trial=rec.number, objective=rec.objective, posterior_mean=posterior_mean, params=rec.params
    )


def write_outputs(
    out_dir: str | os.PathLike[str],
    study: str,
    records: Sequence[TrialRecord],
    direction: str,
    warmup_cost: float | None,
    recommended: Recommended | None = None,
) -> dict[str, Path]:
    """Write ``results.csv``, ``best.yaml`` and ``best_vs_cost.png`` into ``out_dir``.

    ``recommended`` (the trial that :meth:`eeipu.Optimizer.recommend` picked, see
    :func:`recommended_record`) is written to ``best.yaml`` beside the best observed
    configuration."""
    paths = output_paths(out_dir)
    rows = trial_rows(records, direction)
    _atomic_write(paths["csv"], results_csv(rows).encode())
    summary = study_summary(study, records, direction)
    if recommended is not None:
        summary["recommended"] = {
            "trial": recommended.trial,
            "posterior_mean": recommended.posterior_mean,
            "objective": recommended.objective,
            "params": recommended.params,
        }
    _atomic_write(
        paths["yaml"], yaml.safe_dump(json.loads(json.dumps(summary)), sort_keys=False).encode()
    )
    _plot(paths["png"], study, rows, warmup_cost)
    return paths


def output_paths(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Where :func:`write_outputs` writes ``results.csv``, ``best.yaml`` and the plot."""
    out = Path(out_dir)
    return {"csv": out / "results.csv", "yaml": out / "best.yaml", "png": out / "best_vs_cost.png"}


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``results.csv``'s text: one row per :func:`trial_rows` row, every key a column."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def study_summary(study: str, records: Sequence[TrialRecord], direction: str) -> dict[str, Any]:
    """``best.yaml`` without its ``recommended`` section (which needs a fitted model): the
    trial and failure counts, what was spent and the best observed trial, JSON-ready."""
    best = best_record(records, direction)
    n_complete = sum(r.complete for r in records)
    summary = {
        "study": study,
        "direction": direction,
        "trials": len(records),
        "failed": len(records) - n_complete,
        "spent": round(sum(r.cost for r in records), 6),
        "best": None
        if best is None
        else {"trial": best.number, "objective": best.objective, "params": best.params},
    }
    return json.loads(json.dumps(summary))


def best_record(records: Sequence[TrialRecord], direction: str) -> TrialRecord | None:
    """The complete record with the best objective (the first of a tie), as ``best.yaml``'s
    ``best`` names it; None before a trial completed."""
    sign = 1.0 if direction == "maximize" else -1.0
    complete = [r for r in records if r.complete and r.objective is not None]
    return max(complete, key=lambda r: sign * r.objective) if complete else None  # type: ignore[operator]


def _plot(path: Path, study: str, rows: list[dict[str, Any]], warmup_cost: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = [row["cumulative_cost"] for row in rows if row["best"] is not None]
    ys = [row["best"] for row in rows if row["best"] is not None]
    if xs:
        ax.step(xs, ys, where="post", color="tab:blue", lw=2, label="best so far")
    ok = [row for row in rows if row["objective"] is not None]
    if ok:
        hits = [row for row in ok if row["cached"]]
        miss = [row for row in ok if not row["cached"]]
        ax.scatter(
            [row["cumulative_cost"] for row in miss],
            [row["objective"] for row in miss],
            s=14,
            color="tab:gray",
            alpha=0.6,
            label="trial (nothing cached)",
        )
        ax.scatter(
            [row["cumulative_cost"] for row in hits],
            [row["objective"] for row in hits],
            s=14,
            color="tab:orange",
            alpha=0.8,
            label="trial (cached prefix)",
        )
        lo = min(row["objective"] for row in ok)
        hi = max(row["objective"] for row in ok)
        pad = 0.05 * (hi - lo or 1.0)
        # Zoom on the interesting range: outliers far below the best would flatten the curve.
        floor = sorted(row["objective"] for row in ok)[len(ok) // 4] if len(ok) > 8 else lo
        ax.set_ylim(min(floor, ys[0] if ys else floor) - pad, hi + pad)
    if warmup_cost is not None:
        ax.axvline(warmup_cost, color="k", ls=":", lw=1, label="end of warm-up")
    ax.set_xlabel("cumulative cost")
    ax.set_ylabel("objective")
    ax.set_title(f"{study}: best objective vs cumulative cost")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    _atomic_write(path, buf.getvalue())
