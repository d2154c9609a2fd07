"""The ask/tell loop shared by every method."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.quasirandom import SobolEngine

from eeipu._acquisition import cooling_eta
from eeipu._cache import CacheView, HistoryCacheView, cached_prefix, canonical_json
from eeipu._errors import OptimizerError, TellError
from eeipu._methods import Method, Observations, Proposal, make_method
from eeipu._models import CostModel, fit_gp, gp_hyperparameters
from eeipu._prefixes import Prefix
from eeipu._space import SearchSpace
from eeipu._trial import Trial, TrialState

__all__ = ["Optimizer"]

_DIRECTIONS = ("maximize", "minimize")


class Optimizer:
    """Ask/tell Bayesian optimization of a multi-stage pipeline under a cost budget.

    Args:
        space: The search space (stages in pipeline order).
        method: A registered method name: ``eeipu`` (default), ``ms_carbo``, ``carbo``,
            ``eips``, ``ei``, ``ms_bo``, ``lambo``, ``random``.
        budget: Total cost budget B_total (same unit as the costs told).
        n_init: Warm-up trials, drawn from a scrambled Sobol sequence of ``seed``: the same
            for every method with the same seed and space. Their cost counts.
        seed: Seed of every random choice (same seed => same trials for the same results).
        direction: ``"maximize"`` or ``"minimize"`` the objective.
        max_prefixes: Size cap of the prefix pool: the cached proper prefixes of the best
            told trials (all prefixes of each), plus a quarter of the slots for prefixes of
            other trials drawn at random. Every prefix's candidates are screened; the
            method gives L-BFGS starts to the most promising (see ``prefix_starts``).
        method_options: Extra keyword arguments for the method (e.g. ``num_restarts``).
        num_threads: torch intra-op threads while the optimizer fits models (``ask``,
            ``expected_cost``, ``recommend``; restored afterwards); None keeps torch's
            setting. The GPs are small: one thread is as fast on an idle
            machine and 10x+ faster on a busy one, where several spinning threads fight for
            the cores (``benchmarks/bench_ask.py``).

    Example:
        >>> opt = Optimizer(space, method="eeipu", budget=200.0, n_init=10, seed=0)
        >>> while not opt.done:
        ...     trial = opt.ask()
        ...     objective, costs = run(trial.params)        # your pipeline
        ...     opt.tell(trial, objective=objective, costs=costs)
        >>> opt.best_trial.params
    """

    def __init__(
        self,
        space: SearchSpace,
        method: str | Method = "eeipu",
        budget: float = 200.0,
        n_init: int = 10,
        seed: int = 0,
        direction: str = "maximize",
        max_prefixes: int = 24,
        method_options: Mapping[str, Any] | None = None,
        num_threads: int | None = 1,
    ) -> None:
        _check_args(space, budget, n_init, seed, direction, max_prefixes, num_threads)
        self.space = space
        self.method = (
            method
            if isinstance(method, Method)
            else make_method(method, **dict(method_options or {}))
        )
        self.budget = float(budget)
        self.n_init = int(n_init)
        self.seed = int(seed)
        self.direction = direction
        self.max_prefixes = max_prefixes
        self.num_threads = num_threads
        self._warmup = SobolEngine(space.dim, scramble=True, seed=self.seed).draw(
            self.n_init, dtype=torch.double
        )
        self._pending: dict[int, Trial] = {}
        self._told: list[Trial] = []
        self._n_asked = 0
        self._spent = 0.0
        self._warmup_spent: float | None = None
        self._history_view = HistoryCacheView(space.stages)
        self._prior: list[Trial] = []  # other studies' trials (add_prior): models only
        self._asked_keys: set[str] = set()  # canonical JSON of every asked configuration
        # expected_cost's model, with the told trials it was fitted on, and the per-stage
        # hyperparameters its next fit starts from.
        self._expected_model: tuple[tuple[int, ...], CostModel] | None = None
        self._expected_init: list[dict[str, Tensor] | None] | None = None

    # ------------------------------------------------------------------ state
    @property
    def trials(self) -> list[Trial]:
        """Told trials, in telling order (copies)."""
        return [t.copy() for t in self._told]

    @property
    def pending(self) -> list[Trial]:
        """Asked trials not told yet (copies)."""
        return [t.copy() for t in self._pending.values()]

    @property
    def spent(self) -> float:
        """Budget used: the sum of every told cost, failed trials included."""
        return self._spent

    @property
    def budget_left(self) -> float:
        return max(self.budget - self._spent, 0.0)

    @property
    def done(self) -> bool:
        """True once the budget is spent."""
        return self._spent >= self.budget

    @property
    def warmup_spent(self) -> float | None:
        """B_0, the budget used when the warm-up ended (None during warm-up)."""
        return self._warmup_spent

    @property
    def model_ready(self) -> bool:
        """Whether an ask past the warm-up fits models: once two told trials (priors
        included) have different objective values. Until then it proposes a random trial
        (a parallel study's loop waits for one more warm-up trial instead)."""
        values = {t.objective for t in self._prior + self._told if t.state is TrialState.COMPLETE}
        return len(values) >= 2

    @property
    def eta(self) -> float:
        """Current cost-cooling exponent η."""
        return cooling_eta(self.budget, self._spent, self._warmup_spent)

    @property
    def best_trial(self) -> Trial | None:
        """The complete trial with the best objective (None before any)."""
        complete = [t for t in self._told if t.state is TrialState.COMPLETE]
        if not complete:
            return None
        sign = 1.0 if self.direction == "maximize" else -1.0
        return max(complete, key=lambda t: sign * t.objective).copy()

    def recommend(self) -> tuple[Trial, float] | None:
        """The evaluated configuration to report: the complete trial with the best posterior
        mean of an objective GP fitted to every complete trial, with that mean (in the
        objective's units). On a noisy objective the best *observed* trial
        (:attr:`best_trial`) is often the luckiest draw; the posterior mean pools its
        neighbours. On a noise-free one the GP interpolates, so both agree (up to ties).
        With fewer than 3 distinct objective values, the best observed trial and its value.
        None before any complete trial.
        """
        complete = [t for t in self._told if t.state is TrialState.COMPLETE]
        if not complete:
            return None
        sign = 1.0 if self.direction == "maximize" else -1.0
        Y = torch.tensor([[sign * t.objective] for t in complete], dtype=torch.double)
        if len(complete) < 3 or len(set(Y.reshape(-1).tolist())) < 3:
            best = max(complete, key=lambda t: sign * t.objective)
            return best.copy(), float(best.objective)
        X = torch.stack([self.space.encode(t.params) for t in complete])
        with self._threads(), torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = fit_gp(X, Y)
        with torch.no_grad():
            mean = model.posterior(X).mean.reshape(-1)
        i = int(mean.argmax())
        return complete[i].copy(), sign * float(mean[i])

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """torch's intra-op threads set to ``num_threads`` while models are fitted."""
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def state_dict(self) -> dict[str, Any]:
        """The method's carry-over state (JSON-able), to store beside the told trials.

        Trials alone rebuild the optimizer (:meth:`add_trial`); this adds what the method
        carries from one ask to the next, such as warm-start hyperparameters, so that a
        resumed optimizer proposes exactly what an uninterrupted one would.
        """
        return {"method": self.method.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (after replaying the trials with :meth:`add_trial`)."""
        self.method.load_state_dict(dict(state.get("method", {})))

    # ------------------------------------------------------------------ ask
    def ask(self, cache: CacheView | None = None) -> Trial:
        """Propose the next trial.

        Args:
            cache: What is really cached (see :class:`CacheView`); default: a view derived
                from this optimizer's told trials.
        """
        view = self._history_view if cache is None else cache
        number = self._n_asked
        if number < self.n_init:
            x, prefix, origin, acq_value = self._warmup[number], None, "warmup", None
            acq_terms = None
        else:
            with self._threads():
                obs = self._observations(view, number)  # fantasizes pending trials: a GP
                if not self.model_ready:
                    proposal = None
                else:
                    with torch.random.fork_rng():
                        # Fitting restarts draw from torch's global RNG; fork it so a seeded
                        # ask is reproducible without touching the caller's random state.
                        torch.manual_seed(obs.seed)
                        proposal = self.method.propose(obs)
            if proposal is None:
                # Too little (or degenerate) data for a GP: keep exploring at random.
                x = torch.rand(self.space.dim, generator=obs.rng, dtype=torch.double)
                prefix, origin, acq_value, acq_terms = None, "random", None, None
            else:
                proposal = self._first_new(proposal, obs)
                x, prefix, acq_value = proposal.x, proposal.prefix, proposal.acq_value
                acq_terms = None if proposal.acq_terms is None else dict(proposal.acq_terms)
                origin = self.method.name
        params = self._params(x, prefix)
        trial = Trial(
            number=number,
            params=params,
            memoized=self._memoized(view, params),
            origin=origin,
            acq_value=acq_value,
            acq_terms=acq_terms,
        )
        self._pending[number] = trial
        self._asked_keys.add(canonical_json(trial.params))
        self._n_asked += 1
        return trial.copy()

    def enqueue(
        self,
        params: Mapping[str, Mapping[str, Any]],
        *,
        origin: str = "enqueued",
        acq_value: float | None = None,
        memoized: Iterable[str] | None = None,
        cache: CacheView | None = None,
        acq_terms: Mapping[str, float] | None = None,
    ) -> Trial:
        """Ask a given configuration: it becomes the next pending trial, as if :meth:`ask`
        had proposed it (it takes the next number and counts towards ``n_init``).

        Used to re-run trials that were in flight when a study stopped, with what
        :meth:`ask` said of them then (``origin``, ``acq_value``, ``memoized``,
        ``acq_terms``), or to evaluate a configuration of one's own. ``memoized`` defaults
        to the stages ``cache`` (default: the told trials) holds for ``params``.
        """
        self.space.validate(params)
        view = self._history_view if cache is None else cache
        params = {s: dict(params[s]) for s in self.space.stages}
        trial = Trial(
            number=self._n_asked,
            params=params,
            memoized=self._memoized(view, params) if memoized is None else tuple(memoized),
            origin=origin,
            acq_value=acq_value,
            acq_terms=None if acq_terms is None else dict(acq_terms),
        )
        self._pending[trial.number] = trial
        self._asked_keys.add(canonical_json(trial.params))
        self._n_asked += 1
        return trial.copy()

    def expected_cost(self, trial: Trial, loads: Iterable[str] | None = None) -> float | None:
        """What ``trial`` is expected to cost, from the told trials: per stage, a GP on the
        log compute costs of the stage (inputs: its own and upstream parameters; a constant
        when the costs do not vary), the lognormal mean ``exp(mu + sigma^2 / 2)`` for stages
        it computes, the mean measured load cost for the stages it expects to load
        (``loads``, default ``trial.memoized``, e.g. also the stages a trial in flight is
        computing for it; 1% of the stage's typical cost before any load was measured), plus
        the mean overhead told with the trials (``tell(overhead=)``), if any.

        None before two trials were told with costs. Used to keep trials in flight from
        overshooting the budget (a study stops submitting when what is spent plus what is
        in flight is expected to reach it). The model is fitted once per set of told trials
        (calls between two tells share it), each fit starting from the hyperparameters of the
        method's own per-stage cost GPs (:meth:`Method.cost_hyperparameters`; fitted on the
        same trials by the ask just made, they are the fit, with no L-BFGS run) or else from
        the previous call's: a few L-BFGS steps, not a cold fit per call.
        """
        told = [t for t in self._told if t.costs]
        if len(told) < 2:
            return None
        stages = self.space.stages
        fitted_on = tuple(t.number for t in told)
        if self._expected_model is None or self._expected_model[0] != fitted_on:
            X = torch.stack([self.space.encode(t.params) for t in told])
            costs, cached = self._cost_rows(told)
            cols = [slice(0, self.space.prefix_dim(k + 1)) for k in range(len(stages))]
            # The method's cost GPs of its last ask are the same model: fitted on these
            # trials (a parallel study asks, then calls this), they are reused unfitted.
            init = self.method.cost_hyperparameters() or self._expected_init
            with self._threads(), torch.random.fork_rng():
                torch.manual_seed(self.seed)
                fitted = CostModel.fit(X, costs, cached, cols, n_samples=1, init=init)
            self._expected_init = [
                None if s.model is None else gp_hyperparameters(s.model) for s in fitted.stages
            ]
            self._expected_model = (fitted_on, fitted)
        model = self._expected_model[1]
        loaded = set(trial.memoized if loads is None else loads)
        x = self.space.encode(trial.params).unsqueeze(0)
        total = 0.0
        for k, (stage, predictor) in enumerate(zip(stages, model.stages, strict=True)):
            if stage in loaded:
                total += math.exp(float(model.log_load[k]))
            else:
                with torch.no_grad():
                    mean, std = predictor.mean_std(x)
                total += math.exp(float(mean[0]) + float(std[0]) ** 2 / 2)
        return total + self._mean_overhead()

    def _params(self, x: Tensor, prefix: Prefix | None) -> dict[str, dict[str, Any]]:
        params = self.space.decode(x)
        if prefix is not None:
            # Copy the cached stages' values verbatim: re-decoding could drift by an ulp and
            # miss the exact-match cache.
            for stage in self.space.stages[: prefix.n_stages]:
                params[stage] = dict(prefix.params[stage])
        return params

    def _first_new(self, proposal: Proposal, obs: Observations) -> Proposal:
        """The best proposal whose configuration was not asked before (ints, categoricals
        and bounds make exact repeats possible; a repeat teaches the models nothing). If
        every candidate is a repeat, a random new point (or, in an exhausted discrete space,
        the winner after all)."""
        seen = self._asked_keys
        for candidate in (proposal, *proposal.alternatives):
            if canonical_json(self._params(candidate.x, candidate.prefix)) not in seen:
                return candidate
        for _ in range(256):
            x = torch.rand(self.space.dim, generator=obs.rng, dtype=torch.double)
            if canonical_json(self.space.decode(x)) not in seen:
                return Proposal(x)
        return proposal

    def _cost_rows(self, told: list[Trial]) -> tuple[Tensor, Tensor]:
        """``n x S`` stage costs (NaN where unknown) and ``n x S`` cached flags of ``told``.

        A failed trial's last reported stage is the one that failed: its cost is the time
        up to the crash, a lower bound of what the stage costs, so it is left out (NaN)
        rather than teach the cost model that regions which crash early are cheap. The
        stages before it completed and keep their costs. (The budget still counts it.)
        """
        stages = self.space.stages
        costs = torch.full((len(told), len(stages)), math.nan, dtype=torch.double)
        cached = torch.zeros(len(told), len(stages), dtype=torch.bool)
        for i, t in enumerate(told):
            reached = [k for k, s in enumerate(stages) if s in t.costs]
            for k in reached:
                costs[i, k] = t.costs[stages[k]]
                cached[i, k] = stages[k] in t.cached
            if t.state is TrialState.FAILED and reached and stages[reached[-1]] not in t.cached:
                costs[i, reached[-1]] = math.nan
        return costs, cached

    def _mean_overhead(self) -> float:
        """The mean overhead of this study's told trials that were charged one (0 if none):
        what the next trial is expected to pay on top of its stages."""
        charged = [t.overhead for t in self._told if t.overhead > 0]
        return sum(charged) / len(charged) if charged else 0.0

    def _memoized(
        self, view: CacheView, params: Mapping[str, Mapping[str, Any]]
    ) -> tuple[str, ...]:
        return cached_prefix(view, self.space.stages, params)

    def _observations(self, view: CacheView, number: int) -> Observations:
        """What the method is handed for ask ``number``: the told trials as they are (failed
        ones with a NaN objective), the trials in flight with believed objectives, and the
        prefix pool the method builds (:meth:`Method.prefix_pool`)."""
        told = self._prior + self._told
        seed = (self.seed * 1_000_003 + number) % (2**31 - 1)
        rng = torch.Generator().manual_seed(seed)
        sign = 1.0 if self.direction == "maximize" else -1.0
        X = torch.stack([self.space.encode(t.params) for t in told]) if told else None
        y = [sign * t.objective if t.state is TrialState.COMPLETE else math.nan for t in told]
        Y = torch.tensor(y, dtype=torch.double).unsqueeze(-1)
        ok = ~torch.isnan(Y).squeeze(-1)
        costs, cached = self._cost_rows(told)
        outputs = self._output_rows(told, sign)
        if not ok.any():  # nothing to model yet (the ask then draws at random)
            X = torch.zeros(0, self.space.dim, dtype=torch.double)
            Y, costs, cached, outputs = Y[:0], costs[:0], cached[:0], outputs[:0]
        pending = [t for n, t in self._pending.items() if n != number]
        if pending and ok.any():
            X, Y, costs, cached, outputs = self._with_pending(
                pending, seed, X, Y, costs, cached, outputs
            )
        obs = Observations(
            space=self.space,
            X=X,
            Y=Y,
            costs=costs,
            cached=cached,
            eta=self.eta,
            prefixes=[],
            seed=seed,
            rng=rng,
            stage_outputs=outputs if any(t.stage_outputs for t in told) else None,
            optimizer_seed=self.seed,
            n_pending=len(pending) if ok.any() else 0,
            overhead=self._mean_overhead(),
            failed=~ok if ok.any() and not ok.all() else None,
            trials=tuple(told),
            direction=self.direction,
        )
        obs.prefixes = self.method.prefix_pool(obs, view, self.max_prefixes)
        return obs

    def _output_rows(self, told: list[Trial], sign: float) -> Tensor:
        """``n x S`` stage outputs told with ``told`` (NaN where none), signed like ``Y``."""
        outputs = torch.full((len(told), len(self.space.stages)), math.nan, dtype=torch.double)
        for i, t in enumerate(told):
            for k, stage in enumerate(self.space.stages):
                if t.stage_outputs is not None and stage in t.stage_outputs:
                    outputs[i, k] = sign * t.stage_outputs[stage]
        return outputs

    def _with_pending(
        self, pending: list[Trial], seed: int, X: Tensor, *rows: Tensor
    ) -> tuple[Tensor, ...]:
        """``X``, ``Y``, costs, cached, outputs with the trials in flight appended: their
        objective believed (the method's :meth:`Method.fantasize`, so that the acquisition
        does not propose them, or their neighbours, again), their costs and outputs unknown
        (NaN rows train no cost model)."""
        Y, costs, cached, outputs = rows
        X_p = torch.stack([self.space.encode(t.params) for t in pending])
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # a fit, if the method makes one, is seeded too
            Y_p = self.method.fantasize(X, Y, X_p)
        p, S = len(pending), len(self.space.stages)
        return (
            torch.cat([X, X_p]),
            torch.cat([Y, Y_p]),
            torch.cat([costs, torch.full((p, S), math.nan).to(costs)]),
            torch.cat([cached, torch.zeros(p, S, dtype=torch.bool)]),
            torch.cat([outputs, torch.full((p, S), math.nan).to(outputs)]),
        )

    @property
    def priors(self) -> list[Trial]:
        """Trials added with :meth:`add_prior` (copies)."""
        return [t.copy() for t in self._prior]

    def add_prior(
        self,
        params: Mapping[str, Mapping[str, Any]],
        objective: float | None,
        costs: Mapping[str, float],
        cached: Iterable[str] = (),
        origin: str = "prior",
    ) -> Trial:
        """Add another study's trial as a prior observation (warm start).

        A prior trains the objective and cost models and its configuration joins the prefix
        pool (where the cache view confirms its prefixes) and the set of configurations not
        to propose again. It is *not* one of this study's trials: it takes no number, spends
        no budget, does not count towards the ``n_init`` warm-up and is never
        :attr:`best_trial`. Costs are validated like :meth:`tell`'s.

        Example:
            >>> opt.add_prior({"prep": {...}, "train": {...}}, 0.91, {"prep": 3.0, "train": 9.1})
        """
        self.space.validate(params)
        trial = Trial(
            number=-1 - len(self._prior),
            params={s: dict(params[s]) for s in self.space.stages},
            memoized=tuple(cached),
            origin=origin,
        )
        told = self._record(trial, objective, costs, cached, None, 0.0)
        self._prior.append(told)
        self._asked_keys.add(canonical_json(told.params))
        return told.copy()

    def add_trial(
        self,
        params: Mapping[str, Mapping[str, Any]],
        objective: float | None,
        costs: Mapping[str, float],
        cached: Iterable[str] = (),
        origin: str = "replay",
        stage_outputs: Mapping[str, float] | None = None,
        overhead: float = 0.0,
    ) -> Trial:
        """Record a trial evaluated elsewhere as if it had been asked and told here.

        Used to resume a study from its journal or to warm-start from another study: the
        trial takes the next number, so a resumed optimizer continues where it stopped
        (the warm-up included). ``stage_outputs`` and ``overhead`` as in :meth:`tell`.
        """
        self.space.validate(params)
        number = self._n_asked
        trial = Trial(
            number=number,
            params={s: dict(params[s]) for s in self.space.stages},
            memoized=tuple(cached),
            origin=origin,
        )
        self._pending[number] = trial
        self._n_asked += 1
        try:
            told = self.tell(
                trial,
                objective=objective,
                costs=costs,
                cached=cached,
                stage_outputs=stage_outputs,
                overhead=overhead,
            )
        except Exception:
            del self._pending[number]
            self._n_asked -= 1
            raise
        self._asked_keys.add(canonical_json(told.params))
        return told

    # ------------------------------------------------------------------ tell
    def tell(
        self,
        trial: Trial | int,
        objective: float | None,
        costs: Mapping[str, float],
        cached: Iterable[str] | None = None,
        stage_outputs: Mapping[str, float] | None = None,
        overhead: float = 0.0,
    ) -> Trial:
        """Record a trial's results.

        Args:
            trial: The trial returned by :meth:`ask` (or its number).
            objective: The objective value, or ``None`` when the trial failed.
            costs: ``{stage: cost}`` actually spent (a cached stage reports its load cost).
                A complete trial reports every stage; a failed one the stages it reached.
            cached: Stages that really loaded from the cache (default: ``trial.memoized``).
            stage_outputs: Optional ``{stage: value}``, a scalar output of each stage that
                reports one (an intermediate metric); cascade methods (``ms_bo``) model
                stage k's output from its parameters and stage k-1's output. Stages may be
                left out; the objective stands for the last stage's output.
            overhead: Cost charged on top of the stages, in the same unit (e.g. the wall
                seconds of ``ask()`` and orchestration, for a budget of wall time). It
                counts in :attr:`spent`, not in any cost model (it does not depend on the
                configuration).

        Returns:
            The told trial.
        """
        number = trial.number if isinstance(trial, Trial) else trial
        if isinstance(number, bool) or not isinstance(number, int):
            raise TellError(f"`trial` must be a Trial or its number, but got {trial!r}")
        if number not in self._pending:
            if any(t.number == number for t in self._told):
                raise TellError(f"trial {number} was already told; a trial is told once")
            raise TellError(f"trial {number} was never asked by this optimizer")
        done = self._record(
            self._pending[number], objective, costs, cached, stage_outputs, overhead
        )
        del self._pending[number]
        self._told.append(done)
        self._spent += done.cost
        if (
            self._warmup_spent is None
            and sum(t.number < self.n_init for t in self._told) >= self.n_init
        ):
            self._warmup_spent = self._spent
        return done.copy()

    def _record(
        self,
        asked: Trial,
        objective: float | None,
        costs: Mapping[str, float],
        cached: Iterable[str] | None,
        stage_outputs: Mapping[str, float] | None,
        overhead: float,
    ) -> Trial:
        """``asked`` with its results (validated, see :meth:`tell`), its complete
        configuration added to the history cache view."""
        number = asked.number
        _check_objective(objective, number)
        stages = self.space.stages
        _check_costs(costs, objective is not None, stages, number)
        if not _is_cost(overhead):
            raise TellError(
                f"`overhead` must be a finite number >= 0, but got {overhead!r} (trial {number})"
            )
        cached_t = asked.memoized if cached is None else tuple(cached)
        bad = sorted(set(cached_t) - set(stages))
        if bad:
            raise TellError(f"`cached` names unknown stage(s) {bad}; stages are {list(stages)}")
        outputs = _check_stage_outputs(stage_outputs, stages, number)
        done = asked
        done.state = TrialState.COMPLETE if objective is not None else TrialState.FAILED
        done.objective = float(objective) if objective is not None else None
        done.costs = {s: float(costs[s]) for s in stages if s in costs}
        done.cached = tuple(s for s in stages if s in cached_t)
        done.stage_outputs = outputs
        done.overhead = float(overhead)
        if done.state is TrialState.COMPLETE:
            self._history_view.add(done.params)
        return done


def _check_objective(objective: float | None, number: int) -> None:
    """Raise :class:`TellError` unless ``objective`` is None (failed) or a finite number."""
    if objective is None:
        return
    if isinstance(objective, bool) or not isinstance(objective, numbers.Real):
        raise TellError(
            f"`objective` must be a number or None (failed), but got {objective!r} (trial {number})"
        )
    if not math.isfinite(objective):
        raise TellError(
            f"`objective` must be finite, but got {objective!r} (trial {number}); "
            "tell objective=None to record a failed trial"
        )


def _check_costs(
    costs: Mapping[str, float], complete: bool, stages: tuple[str, ...], number: int
) -> None:
    """Raise :class:`TellError` unless ``costs`` maps known stages to costs, every stage's
    when the trial is ``complete``."""
    if not isinstance(costs, Mapping):
        raise TellError(f"`costs` must map stage -> cost, but got {costs!r} (trial {number})")
    unknown = sorted(set(costs) - set(stages))
    if unknown:
        raise TellError(f"costs for unknown stage(s) {unknown}; stages are {list(stages)}")
    for stage, c in costs.items():
        if not _is_cost(c):
            raise TellError(
                f"cost must be a finite number >= 0, but got {c!r} (trial {number}, stage {stage!r})"
            )
    if complete:
        missing = [s for s in stages if s not in costs]
        if missing:
            raise TellError(
                f"a complete trial reports the cost of every stage, but {missing} are missing "
                f"(trial {number})"
            )


def _check_args(
    space: Any,
    budget: Any,
    n_init: Any,
    seed: Any,
    direction: Any,
    max_prefixes: Any,
    num_threads: Any,
) -> None:
    """Raise :class:`OptimizerError` naming the first :class:`Optimizer` argument that
    breaks its rule."""
    if not isinstance(space, SearchSpace):
        raise OptimizerError(
            f"`space` must be a SearchSpace (use SearchSpace.from_dict), but got {type(space).__name__}"
        )
    if (
        isinstance(budget, bool)
        or not isinstance(budget, numbers.Real)
        or not (math.isfinite(budget) and budget > 0)
    ):
        raise OptimizerError(f"`budget > 0` must hold, but got budget={budget!r}")
    if isinstance(n_init, bool) or not isinstance(n_init, numbers.Integral) or n_init < 1:
        raise OptimizerError(f"`n_init >= 1` must hold (an integer), but got n_init={n_init!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise OptimizerError(f"`seed` must be a non-negative integer, but got seed={seed!r}")
    if direction not in _DIRECTIONS:
        raise OptimizerError(
            f"`direction` must be one of {list(_DIRECTIONS)}, but got {direction!r}"
        )
    if isinstance(max_prefixes, bool) or not isinstance(max_prefixes, int) or max_prefixes < 0:
        raise OptimizerError(f"`max_prefixes >= 0` must hold, but got {max_prefixes!r}")
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise OptimizerError(f"`num_threads` must be None or >= 1, but got {num_threads!r}")


def _is_cost(value: Any) -> bool:
    """Whether ``value`` is a valid cost: a finite real number >= 0 (not a bool)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and value >= 0
    )


def _check_stage_outputs(
    stage_outputs: Mapping[str, float] | None, stages: tuple[str, ...], number: int
) -> dict[str, float] | None:
    """Validate ``tell``'s ``stage_outputs``: known stages, finite numbers (None stays None)."""
    if stage_outputs is None:
        return None
    if not isinstance(stage_outputs, Mapping):
        raise TellError(
            f"`stage_outputs` must map stage -> number, but got {stage_outputs!r} (trial {number})"
        )
    unknown = sorted(set(stage_outputs) - set(stages))
    if unknown:
        raise TellError(
            f"`stage_outputs` names unknown stage(s) {unknown}; stages are {list(stages)}"
        )
    for stage, v in stage_outputs.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise TellError(
                f"a stage output must be a finite number, but got {v!r} "
                f"(trial {number}, stage {stage!r})"
            )
    return {s: float(stage_outputs[s]) for s in stages if s in stage_outputs}
