"""The suite's outputs for people: a markdown table and a best-vs-cost plot per problem."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._metrics import (
    best_curve,
    bootstrap_diff,
    bootstrap_gain,
    cost_to_target,
    mean_std,
    quartiles,
    relative_gain,
    reuse_metrics,
    run_metrics,
)

__all__ = ["Report", "build_report", "write_plot"]

Runs = Mapping[str, Mapping[int, Mapping[str, Any]]]  # method -> seed -> run


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}g}" if abs(v) < 10 ** (digits + 1) else f"{v:.0f}"


def _ms(values: Sequence[float | None], digits: int = 3) -> str:
    vals = [v for v in values if v is not None]
    m, s = mean_std(vals)
    if not vals:
        return "n/a"
    return f"{_fmt(m, digits)} ± {_fmt(s, 2)}"


def verdict(lo: float, hi: float) -> str:
    """ "ahead", "behind" or "within noise": where a difference's interval lies against 0."""
    if lo > 0:
        return "ahead"
    if hi < 0:
        return "behind"
    return "within noise"


def distinct_resamples(n: int) -> int:
    """How many distinct bootstrap resamples ``n`` paired seeds have (multisets of size n
    drawn from n): 10 for 3 seeds, 126 for 5, 92378 for 10."""
    return math.comb(2 * n - 1, n) if n > 0 else 0


def _pct(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return "+inf%" if math.isinf(v) else f"{v:+.0f}%"


class Report:
    """Per-method metrics and EEIPU's gains over paired seeds, ready to print.

    Args:
        runs: ``method -> seed -> run`` (only methods with every seed in ``seeds``).
        seeds: The paired seeds.
        reference: The method whose gains are reported (eeipu).
        target_fraction: Cost-to-target's target, per seed: warm-up best + f * (best any
            method found - warm-up best).
    """

    def __init__(
        self, runs: Runs, seeds: Sequence[int], reference: str, target_fraction: float
    ) -> None:
        self.runs, self.seeds, self.reference = runs, list(seeds), reference
        self.target_fraction = target_fraction
        self.methods = list(runs)
        self.metrics = {m: [run_metrics(runs[m][s]) for s in self.seeds] for m in self.methods}
        self.reuse = {m: [reuse_metrics(runs[m][s]) for s in self.seeds] for m in self.methods}
        self.targets: list[float] = []
        for i, s in enumerate(self.seeds):
            any_run = runs[self.methods[0]][s]
            sign = 1.0 if any_run.get("direction", "maximize") == "maximize" else -1.0
            y0 = self.metrics[self.methods[0]][i]["warmup_best"]
            best = max(
                (self.metrics[m][i]["final_best"] for m in self.methods),
                key=lambda y: sign * y,
            )
            self.targets.append(y0 + target_fraction * (best - y0))
        self.to_target = {
            m: [
                cost_to_target(runs[m][s], t) for s, t in zip(self.seeds, self.targets, strict=True)
            ]
            for m in self.methods
        }

    def values(self, method: str, key: str) -> list[float]:
        return [float(r[key]) for r in self.metrics[method]]

    @property
    def baselines(self) -> list[str]:
        return [m for m in self.methods if m != self.reference]

    def mean_of_baselines(self, key: str) -> list[float]:
        """Per seed, the mean over baselines of ``key``."""
        cols = [self.values(m, key) for m in self.baselines]
        return [sum(c[i] for c in cols) / len(cols) for i in range(len(self.seeds))]

    def gain(self, key: str, other: str | None) -> tuple[float, float, float]:
        """(gain %, 5th, 95th bootstrap percentiles) of the reference over ``other`` (None:
        the mean of the baselines)."""
        ref = self.values(self.reference, key)
        oth = self.mean_of_baselines(key) if other is None else self.values(other, key)
        lo, hi = bootstrap_gain(ref, oth)
        return relative_gain(ref, oth), lo, hi

    # ------------------------------------------------------------------ tables
    def method_table(self) -> str:
        n = len(self.seeds)
        lines = [
            "| method | candidates (total) | candidates after warm-up | cache hits after warm-up "
            "| best at end of warm-up | best at end of budget | improvement after warm-up "
            "| cost to target (mean over seeds reached) | reached target | ask s/trial "
            "| budget spent | wall s/run |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in self.methods:
            reached = [c for c in self.to_target[m] if c is not None]
            lines.append(
                f"| {m} | {_ms(self.values(m, 'candidates'))} "
                f"| {_ms(self.values(m, 'candidates_post'))} "
                f"| {_ms(self.values(m, 'hits_post'))} "
                f"| {_ms(self.values(m, 'warmup_best'), 4)} "
                f"| {_ms(self.values(m, 'final_best'), 4)} "
                f"| {_ms(self.values(m, 'improvement'))} "
                f"| {_ms(reached)} | {len(reached)}/{n} "
                f"| {_ms([r['ask_seconds'] for r in self.metrics[m]], 2)} "
                f"| {_ms(self.values(m, 'spent'))} "
                f"| {self._walls(m)} |"
            )
        return "\n".join(lines)

    def _walls(self, method: str) -> str:
        walls = [self.runs[method][s].get("wall_seconds") for s in self.seeds]
        return "n/a" if None in walls else _ms(walls)

    def gain_table(self) -> str:
        ref = self.reference
        lines = [
            f"| {ref} vs | candidates after warm-up | (90% bootstrap) | candidates (total) "
            "| improvement after warm-up | (90% bootstrap) | mean improvement difference "
            "(90% bootstrap) | verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for other in [*self.baselines, None]:
            label = "**mean of the others**" if other is None else other
            c, clo, chi = self.gain("candidates_post", other)
            t, _, _ = self.gain("candidates", other)
            g, glo, ghi = self.gain("improvement", other)
            refv = self.values(ref, "improvement")
            othv = (
                self.mean_of_baselines("improvement")
                if other is None
                else self.values(other, "improvement")
            )
            dlo, dhi = bootstrap_diff(refv, othv)
            diff = sum(a - b for a, b in zip(refv, othv, strict=True)) / len(refv)
            lines.append(
                f"| {label} | {_pct(c)} | [{_pct(clo)}, {_pct(chi)}] | {_pct(t)} "
                f"| {_pct(g)} | [{_pct(glo)}, {_pct(ghi)}] "
                f"| {_fmt(diff)} [{_fmt(dlo)}, {_fmt(dhi)}] | {verdict(dlo, dhi)} |"
            )
        return "\n".join(lines)

    def reuse_table(self) -> str:
        """Prefix reuse and what it gave up, for every method whose runs record the
        acquisition's terms (issue 12); a sentence when the reference's do not."""
        lines = [
            "| method | seeds recorded | reusing a prefix / trials after warm-up "
            "| share per seed | log EI given up vs best fresh, nats: median [IQR] | mean "
            "| gave up > 0 | expected cost, fresh / reuser: median [IQR] "
            "| acquisition margin: median |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in self.methods:
            got = [r for r in self.reuse[m] if r is not None]
            if not got:
                continue
            reuse, trials = sum(r["reuse"] for r in got), sum(r["trials"] for r in got)
            gap = [v for r in got for v in r["log_ei_given_up"]]
            ratio = [v for r in got for v in r["cost_ratio"]]
            margin = [v for r in got for v in r["margin"]]
            g25, g50, g75 = quartiles(gap)
            r25, r50, r75 = quartiles(ratio)
            share = f"{100 * reuse / trials:.0f}%" if trials else "n/a"
            pos = f"{sum(v > 0 for v in gap)}/{len(gap)}" if gap else "n/a"
            lines.append(
                f"| {m} | {len(got)}/{len(self.seeds)} | {reuse}/{trials} = {share} "
                f"| {_ms([100 * r['share'] for r in got], 2)}% "
                f"| {_fmt(g50)} [{_fmt(g25)}, {_fmt(g75)}] | {_fmt(mean_std(gap)[0])} | {pos} "
                f"| {_fmt(r50)} [{_fmt(r25)}, {_fmt(r75)}] | {_fmt(quartiles(margin)[1])} |"
            )
        if not any(r is not None for r in self.reuse.get(self.reference, [])):
            note = (
                f"Not recorded: these raw runs of {self.reference} predate the acquisition's "
                "terms (issue 12); re-run them (`rerun=true`) to measure prefix reuse."
            )
            return note if len(lines) == 2 else "\n".join([*lines, "", note])
        return "\n".join(lines)

    def checks(self, targets: Sequence[str]) -> list[tuple[str, bool, str]]:
        """The issue's done-when checks: (name, met, detail)."""
        ref, out = self.reference, []
        if not self.baselines:
            return out
        imp = {m: mean_std(self.values(m, "improvement"))[0] for m in self.methods}
        best_other = max(self.baselines, key=lambda m: imp[m])
        for name in targets:
            if name == "candidates_vs_mean":
                g, _, _ = self.gain("candidates_post", None)
                out.append(
                    (
                        f"{ref} evaluates >= 100% more candidates after warm-up than the mean of the others",
                        g >= 100.0,
                        f"gain {_pct(g)}"
                        + ("" if g >= 100.0 else f": missed by {100.0 - g:.0f} points"),
                    )
                )
            elif name == "improvement_vs_each":
                worse = [m for m in self.baselines if imp[ref] <= imp[m]]
                out.append(
                    (
                        f"{ref}'s mean improvement after warm-up beats every baseline's",
                        not worse,
                        f"{ref} {_fmt(imp[ref])}; best baseline {best_other} {_fmt(imp[best_other])}"
                        + (f"; not beaten: {', '.join(worse)}" if worse else ""),
                    )
                )
            elif name == "within_noise_of_best":
                refv = self.values(ref, "improvement")
                othv = self.values(best_other, "improvement")
                lo, hi = bootstrap_diff(refv, othv)
                said = verdict(lo, hi)
                out.append(
                    (
                        f"{ref}'s mean improvement is within noise of the best baseline's or "
                        "ahead of it (the 90% paired-bootstrap interval of the difference "
                        "reaches 0 or lies above it)",
                        said != "behind",
                        f"{said}: {ref} {_fmt(imp[ref])} vs {best_other} "
                        f"{_fmt(imp[best_other])}; difference {_fmt(imp[ref] - imp[best_other])} "
                        f"[{_fmt(lo)}, {_fmt(hi)}]",
                    )
                )
            elif name == "ahead_of_best":
                lo, hi = bootstrap_diff(
                    self.values(ref, "improvement"), self.values(best_other, "improvement")
                )
                out.append(
                    (
                        f"{ref}'s mean improvement is ahead of the best baseline's (the 90% "
                        "paired-bootstrap interval of the difference lies above 0)",
                        verdict(lo, hi) == "ahead",
                        f"{verdict(lo, hi)}: {ref} {_fmt(imp[ref])} vs {best_other} "
                        f"{_fmt(imp[best_other])}; difference {_fmt(imp[ref] - imp[best_other])} "
                        f"[{_fmt(lo)}, {_fmt(hi)}]",
                    )
                )
            elif name == "cost_to_best_baseline":
                out.append(self._cost_to_best_baseline(best_other))
            else:
                raise ValueError(f"unknown check {name!r}")
        return out

    def mean_curve(self, method: str, grid: Sequence[float]) -> list[float]:
        """The mean over seeds of the best objective by cumulative cost (NaN where a seed
        has no complete trial yet)."""
        curves = [best_curve(self.runs[method][s], grid) for s in self.seeds]
        return [sum(c[i] for c in curves) / len(curves) for i in range(len(grid))]

    def _cost_to_best_baseline(self, best_other: str) -> tuple[str, bool, str]:
        """Where the reference's mean best-vs-cost curve first reaches the best baseline's
        final mean, against where the baseline's own curve does: at most 0.6x."""
        ref = self.reference
        sign = (
            1.0
            if self.runs[ref][self.seeds[0]].get("direction", "maximize") == "maximize"
            else -1.0
        )
        target = sum(self.values(best_other, "final_best")) / len(self.seeds)
        top = max(
            sum(t["cost"] for t in r["trials"]) for m in self.methods for r in self.runs[m].values()
        )
        grid = [top * i / 2000 for i in range(1, 2001)]

        def reach(method: str) -> float | None:
            for g, y in zip(grid, self.mean_curve(method, grid), strict=True):
                if not math.isnan(y) and sign * y >= sign * target - 1e-12:
                    return g
            return None

        mine, theirs = reach(ref), reach(best_other)
        name = (
            f"{ref}'s mean best reaches the best baseline's final mean ({best_other}, "
            f"{_fmt(target, 4)}) for <= 0.6x the cost the baseline needs"
        )
        if mine is None or theirs is None:
            return name, False, f"{ref} never reached it" if mine is None else "baseline never did"
        ratio = mine / theirs
        return name, ratio <= 0.6, f"{_fmt(mine)} vs {_fmt(theirs)}: {ratio:.2f}x"


def build_report(
    report: Report,
    *,
    title: str,
    description: str,
    command: str,
    facts: Sequence[str],
    notes: Sequence[str],
    checks: Sequence[str],
    done_when: bool,
    plot_name: str,
) -> str:
    """The markdown page of one problem."""
    n = len(report.seeds)
    parts = [
        f"# Benchmark: {title}",
        "",
        description.strip(),
        "",
        "Regenerate (re-uses the cached raw runs in `raw/`; add `rerun=true` to recompute them):",
        "",
        "```bash",
        command,
        "```",
        "",
        *[f"- {f}" for f in facts],
        "",
        *(
            [
                f"**Preliminary**: {n} seed{'s' if n != 1 else ''} (fewer than 5); a paired "
                f"bootstrap over {n} seeds has only {distinct_resamples(n)} distinct "
                "resamples, so its intervals are coarse.",
                "",
            ]
            if n < 5
            else []
        ),
        f"## Per method (mean ± sample std over {n} seed{'s' if n != 1 else ''})",
        "",
        report.method_table(),
        "",
        f"## {report.reference}'s relative gain",
        "",
        report.gain_table() if report.baselines else "(no baseline ran: nothing to compare)",
        "",
    ]
    parts += [
        f"## {report.reference}'s prefix reuse and what it gave up",
        "",
        report.reuse_table(),
        "",
    ]
    results = report.checks(checks) if report.baselines else []
    if results:
        parts += ["## Done-when checks (issue 5)" if done_when else "## Checks (informational)", ""]
        parts += [
            f"- [{'x' if ok else ' '}] {name}: **{'met' if ok else 'MISSED'}** ({detail})"
            for name, ok, detail in results
        ]
        parts.append("")
    if notes:
        parts += ["## Notes", "", *[f"- {x}" for x in notes], ""]
    parts += [
        "## Definitions",
        "",
        "- *candidates*: trials the loop ran, i.e. every trial started while budget was left "
        "(the optimizer's stopping rule: the last trial may overshoot the budget by its own "
        "cost, for every method alike). *after warm-up* leaves out the shared warm-up trials.",
        "- *improvement after warm-up*: best objective at the end of the budget minus best "
        "objective at the end of the warm-up (the warm-up is the same for every method of a "
        "seed, so all start from the same best).",
        "- *relative gain* of A over B: `100 * (mean_s A_s - mean_s B_s) / mean_s B_s`, the "
        "gain of the seed-averaged metrics over the paired seeds (the literature's "
        "`(eeipu - other) / other * 100`; averaging per-seed ratios instead is undefined when "
        "a baseline improved 0 on a seed). *mean of the others*: B_s = the mean over the "
        "baselines on seed s. Brackets: 5th-95th percentiles over 2000 paired bootstrap "
        "resamples of the seeds. *verdict*: *ahead* when the interval of the mean "
        "difference lies above 0, *behind* when below, else *within noise*.",
        "- *cost to target*: cumulative cost at the first trial reaching the seed's target "
        f"(warm-up best + {report.target_fraction:g} of the way to the best objective any "
        "method found on that seed); the mean is over the seeds where it was reached.",
        "- *ask s/trial*: mean wall seconds per trial after warm-up (ask + simulated evaluation "
        "+ tell; for real pipelines the journal's ask seconds).",
        "- *budget spent*: cost units spent per run (warm-up included; the last trial may "
        "overshoot). *wall s/run*: wall seconds per run on this machine, beside it (asks, "
        "simulated or real stages, orchestration).",
        "- *prefix reuse*: trials after warm-up whose proposal fixed a cached prefix (pooled "
        "over the seeds that record it; *share per seed*: mean ± std). The acquisition is "
        "`log EI + eta * log E[1/C]`; for each reusing proposal it is compared with the best "
        "*fresh* candidate of the same ask (nothing cached: what the method would propose "
        "without memoization). *log EI given up*: `log EI(fresh) - log EI(reuser)` in nats "
        "(negative: the reuser was also the better point); *expected cost, fresh / reuser*: "
        "`E[1/C(reuser)] / E[1/C(fresh)]`, how many times cheaper the reuser was expected to "
        "be; *acquisition margin*: the reuser's acquisition minus the fresh candidate's "
        "(>= 0 for a winner; below 0 only for a runner-up taken because the winner repeated "
        "an earlier configuration). Medians and interquartile ranges over the pooled "
        "proposals.",
        "",
        f"![best objective vs cumulative cost]({plot_name})",
        "",
    ]
    return "\n".join(parts)


def write_plot(report: Report, path: Path, title: str, budget: float) -> None:
    """Best objective vs cumulative cost: seed mean per method, band = ± 1 standard error.

    Left: the whole run; right: the same curves after the (shared) warm-up, zoomed in.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # Up to the largest spend: the last trial of a run may overshoot the budget (the loop's
    # stopping rule); a run's curve holds its final best after its last trial.
    end = max([budget] + [r["spent"] for m in report.methods for r in report.metrics[m]])
    grid = np.linspace(0.0, end, 600)
    warm = [r["warmup_spent"] for m in report.methods for r in report.metrics[m]]
    warm_end = min(warm) if warm else 0.0
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100)
    colors = plt.get_cmap("tab10")
    lows, highs = [], []
    for i, m in enumerate(report.methods):
        curves = np.array([best_curve(report.runs[m][s], grid) for s in report.seeds])
        valid = ~np.isnan(curves).any(axis=0)
        if not valid.any():
            continue
        c = curves[:, valid]
        mean = c.mean(axis=0)
        se = c.std(axis=0, ddof=1) / np.sqrt(len(c)) if len(c) > 1 else np.zeros_like(mean)
        lw = 2.4 if m == report.reference else 1.4
        after = grid[valid] >= warm_end
        if after.any():
            lows.append(float((mean - se)[after].min()))
            highs.append(float((mean + se)[after].max()))
        for ax in axes:
            ax.plot(grid[valid], mean, color=colors(i % 10), lw=lw, label=m)
            ax.fill_between(grid[valid], mean - se, mean + se, color=colors(i % 10), alpha=0.15)
    n = len(report.seeds)
    for ax in axes:
        if warm:
            ax.axvline(
                sum(warm) / len(warm), color="k", ls=":", lw=1, label="end of warm-up (mean)"
            )
        ax.axvline(budget, color="k", ls="--", lw=1, label="budget")
        ax.set_xlabel("cumulative cost")
        ax.set_ylabel("best objective so far")
        ax.grid(alpha=0.3)
    axes[0].set_xlim(0, end)
    axes[0].set_title(f"{title}: mean over {n} seed{'s' if n != 1 else ''}, band ± 1 s.e.")
    if end > warm_end:
        axes[1].set_xlim(warm_end, end)
    if lows and max(highs) > min(lows):
        pad = 0.05 * (max(highs) - min(lows))
        axes[1].set_ylim(min(lows) - pad, max(highs) + pad)
    axes[1].set_title("from the end of the first seed's warm-up (zoomed)")
    axes[1].legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
