"""Budgeted search for per-unit scale factors that raise a task's metric on `dev`, and its controls.

The search sees only the documents it is given (the task's dev split): `search_profile` takes no
other documents, and every score it asks for goes through `DevObjective`, so nothing chosen here has
looked at `test` (a test records every document the scorer sees during a search).

Objective: dev accuracy, ties broken by the mean gold log-likelihood (smoother: it moves when no
answer flips, e.g. on tasks the clean model already gets right). Both are folded into one number that
orders profiles lexicographically, acc + exp(mean gold ll) / n: exp(mean gold ll), the geometric-mean
probability of the gold answers, is below 1 unless every answer is certain, so it can never outweigh
one more correct document (1/n of accuracy).

Methods (each spends at most `budget` dev evaluations, starting from the identity profile, over the
top-k atlas candidates; see `candidates.rank_candidates`):

- ``coordinate``: coordinate ascent. Candidate by candidate in atlas order, try every value of a scale
  grid with the others held, keep the best if it beats the current profile; repeat passes until a
  pass changes nothing or the budget is spent. Grid values are tried mildest first (|v - 1|), so ties
  keep the smaller change; factors that never help stay at 1, which keeps profiles sparse.
- ``cmaes``: CMA-ES (the `cma` package) on the k factors, box-bounded to the scale range, seeded, run
  for as many full generations as the budget allows; its best evaluated point is returned.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import cma
import numpy as np
from tqdm import tqdm

from paramscope.ablation.interventions import apply
from paramscope.errors import StudyError
from paramscope.evaluation.documents import Doc, Scores
from paramscope.evaluation.scorer import score
from paramscope.models.adapters import Adapter
from paramscope.optimize.profile import Profile, Unit

METHODS = ("coordinate", "cmaes")
OBJECTIVE = "dev accuracy, ties broken by mean gold log-likelihood: acc + exp(mean gold ll) / n"


@dataclass(frozen=True)
class SearchSettings:
    budget: int  # dev evaluations per method
    scale_range: tuple[float, float] = (0.0, 2.0)
    grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0)
    sigma0: float = 0.3
    popsize: int | None = None  # None: CMA-ES's default, 4 + 3 ln k
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if self.budget < 1:
            raise StudyError(f"search budget must be >= 1 dev evaluation, got {self.budget}")
        if not 0.0 <= lo < 1.0 < hi:
            raise StudyError(f"scale range must contain 1 strictly inside and start at >= 0, got [{lo}, {hi}]")
        off = [v for v in self.grid if not lo <= v <= hi]
        if off:
            raise StudyError(f"scale grid values {off} lie outside the scale range [{lo}, {hi}]")
        if self.sigma0 <= 0:
            raise StudyError(f"CMA-ES sigma0 must be > 0, got {self.sigma0}")


def fitness(scores: Scores) -> float:
    """Accuracy with mean gold log-likelihood as tie-break, as one number (see the module docstring)."""
    n = len(scores.gold)
    return float(scores.correct.mean() + math.exp(scores.gold_ll.mean()) / n)


@dataclass
class DevObjective:
    """Scores profiles over ``units`` on the dev documents, within a fixed evaluation budget.

    Repeated points are answered from a cache and cost nothing. The best point seen so far is kept;
    a later point replaces it only if strictly better, so ties keep the earlier (milder) one.
    """

    adapter: Adapter
    docs: tuple[Doc, ...]
    units: Sequence[Unit]
    budget: int
    batch_size: int = 64
    evaluations: int = 0
    best_x: np.ndarray | None = None
    best_f: float = -math.inf
    trace: list[float] = field(default_factory=list)  # best-so-far fitness after each evaluation
    on_evaluation: Callable[[], object] | None = None  # e.g. a progress bar's update
    _cache: dict[tuple[float, ...], float] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        return self.budget - self.evaluations

    def __call__(self, x: Sequence[float]) -> float:
        key = tuple(float(v) for v in x)
        if key in self._cache:
            return self._cache[key]
        if self.remaining <= 0:
            raise RuntimeError("search budget spent")  # a method bug: methods check `remaining`
        specs = [u.spec(v) for u, v in zip(self.units, key) if v != 1.0]
        with apply(self.adapter, specs):
            f = fitness(score(self.adapter.model, self.docs, self.batch_size))
        self.evaluations += 1
        self._cache[key] = f
        if f > self.best_f:
            self.best_f, self.best_x = f, np.array(key)
        self.trace.append(self.best_f)
        if self.on_evaluation is not None:
            self.on_evaluation()
        return f


def coordinate_ascent(objective: Callable[[Sequence[float]], float], k: int, settings: SearchSettings,
                      remaining: Callable[[], int]) -> np.ndarray:
    x = np.ones(k)
    best = objective(x)
    grid = sorted(set(settings.grid) - {1.0}, key=lambda v: (abs(v - 1.0), v))
    changed = True
    while changed and remaining() > 0:
        changed = False
        for i in range(k):
            trials = []
            for value in grid:
                if value == x[i]:
                    continue
                if remaining() <= 0:
                    break
                y = x.copy()
                y[i] = value
                trials.append((objective(y), value))
            if trials:
                f, value = max(trials, key=lambda t: t[0])  # first (mildest) value among equals
                if f > best:
                    best, x[i], changed = f, value, True
    return x


@contextlib.contextmanager
def _numpy_global_rng_kept() -> Iterator[None]:
    """`cma` seeds numpy's global generator; leave it as we found it for everyone else."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


def cma_es(objective: Callable[[Sequence[float]], float], k: int, settings: SearchSettings,
           remaining: Callable[[], int]) -> None:
    lo, hi = settings.scale_range
    options = {"bounds": [lo, hi], "seed": settings.seed + 1,  # cma reads seed 0 as "from the clock"
               "verbose": -9, "verb_log": 0, "verb_disp": 0}
    if settings.popsize:
        options["popsize"] = settings.popsize
    with _numpy_global_rng_kept():
        es = cma.CMAEvolutionStrategy(np.ones(k), settings.sigma0, options)
        objective(np.ones(k))  # the identity is the starting point: a search never returns worse
        while not es.stop() and remaining() >= es.popsize:
            population = [np.clip(x, lo, hi) for x in es.ask()]
            es.tell(population, [-objective(x) for x in population])


@dataclass(frozen=True)
class SearchResult:
    method: str
    profile: Profile
    dev_fitness: float
    evaluations: int
    trace: tuple[float, ...]


def search_profile(adapter: Adapter, dev_docs: tuple[Doc, ...], candidates: Sequence[Unit], method: str,
                   settings: SearchSettings, digest: str, task: str, model: str = "") -> SearchResult:
    """The best profile ``method`` finds over ``candidates`` on ``dev_docs`` (the only documents it scores)."""
    if method not in METHODS:
        raise StudyError(f"unknown search method '{method}'; valid: {', '.join(METHODS)}")
    if not candidates:
        raise StudyError("the search needs at least one candidate unit (k >= 1)")
    run = coordinate_ascent if method == "coordinate" else cma_es
    with tqdm(total=settings.budget, desc=f"{task} {method}", leave=False) as bar:
        objective = DevObjective(adapter, tuple(dev_docs), list(candidates), settings.budget, settings.batch_size,
                                 on_evaluation=bar.update)
        run(objective, len(candidates), settings, lambda: objective.remaining)
    provenance = {"method": method, "objective": OBJECTIVE, "split": "dev", "budget": settings.budget,
                  "evaluations": objective.evaluations, "k": len(candidates), "seed": settings.seed,
                  "scale_range": list(settings.scale_range), "dev_fitness": objective.best_f}
    profile = Profile.from_vector(candidates, objective.best_x, model_digest=digest, task=task, model=model,
                                  provenance=provenance)
    return SearchResult(method, profile, objective.best_f, objective.evaluations, tuple(objective.trace))


def select_on_dev(results: Sequence[SearchResult]) -> SearchResult:
    """The method whose profile is best on dev; ties go to the sparser profile, then to method order."""
    return max(results, key=lambda r: (r.dev_fitness, -r.profile.n_factors, -METHODS.index(r.method)))


def random_profiles(profile: Profile, units: Sequence[Unit], n: int, seed: int,
                    scale_range: tuple[float, float] = (0.0, 2.0)) -> list[Profile]:
    """Controls of the same size and strength as ``profile``: as many non-unit factors in each group,
    on units drawn uniformly from that group, with the profile's own |scale - 1| values shuffled
    within the group and given random signs. The multiset of |scale - 1|, hence `Profile.strength`
    (mean |scale - 1|), is exactly the profile's. A sign that would leave the scale range is flipped."""
    lo, hi = scale_range
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[float]] = {}
    for unit, scale in profile.scales:
        by_group.setdefault(unit.group, []).append(abs(scale - 1.0))
    pools = {g: [u for u in units if u.group == g] for g in by_group}
    short = [g for g, devs in by_group.items() if len(pools[g]) < len(devs)]
    if short:
        raise StudyError(f"the profile has more {short[0]} factors than the model has such units")
    controls = []
    for i in range(n):
        scales = []
        for group, deviations in by_group.items():
            chosen = rng.choice(len(pools[group]), size=len(deviations), replace=False)
            for index, dev, sign in zip(chosen, rng.permutation(deviations), rng.choice([-1.0, 1.0], len(deviations))):
                scale = 1.0 + sign * dev
                if not lo <= scale <= hi:
                    scale = 1.0 - sign * dev
                scales.append((pools[group][index], scale))
        controls.append(Profile(model_digest=profile.model_digest, task=profile.task, scales=tuple(scales),
                                model=profile.model, provenance={"control_of": profile.provenance.get("method"),
                                                                 "seed": seed, "draw": i}))
    return controls
