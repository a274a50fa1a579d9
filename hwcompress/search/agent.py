"""The agent protocol: how a search strategy plugs into the pipeline.

An agent searches against a :class:`SearchContext` (the teacher, the cost model, the budget, a scorer)
and reports every student it scores; the pipeline owns everything around it: measuring, checkpoints,
progress, Ctrl-C, the budget repair, fine-tuning and the report. AMC, N2N, uniform and random are
agents like a third party's, registered through the ``register_agents`` hook and created by name
(:func:`make_agent`); the pipeline calls none of them by name.

A minimal agent, a complete one (random ratios under the clamp, as the ``random`` baseline)::

    class MyAgent:
        name = "mine"

        def __init__(self, **options):           # --agent-option KEY=VALUE; refuse unknown ones here
            self.rng = None

        def search(self, context):
            self.rng = self.rng or numpy.random.default_rng(context.seed)
            for episode in range(len(context.history), context.episodes):
                keep = {g.name: context.cost_model.clamp(t, g.channels, {}, context.target)
                        for t, g in enumerate(context.groups)}
                accuracy = context.score(keep)
                reward = context.reward(accuracy, context.cost_model.cost(keep))
                context.report({"episode": episode, "reward": reward, "accuracy": accuracy},
                               Candidate(keep, episode=episode, accuracy=accuracy, reward=reward))
                context.checkpoint()

        def state_dict(self):
            return {"rng": self.rng.bit_generator.state}

        def load_state_dict(self, state):
            self.rng = numpy.random.default_rng()
            self.rng.bit_generator.state = state["rng"]

The rules:

* ``search`` continues from where ``load_state_dict`` left it (``len(context.history)`` students are
  already scored) and returns after ``context.episodes`` students, or earlier when it is done.
* After each student, ``context.report(record, candidate)``: ``record`` is the history row (its
  ``reward``, ``accuracy`` and ``cost``, JSON values); ``candidate`` is given when this student is the
  agent's new best (the agent decides what "best" means).
* ``context.checkpoint()`` whenever the agent's state is consistent; the pipeline then saves
  ``state_dict()`` with the history, so that a resumed run reaches the same policy as an uninterrupted
  one with the same seed. Every random generator belongs in the state.
* Optional ``summary() -> dict``: extra facts for result.json, under the agent's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from hwcompress.budget import Budget
from hwcompress.errors import UserError
from hwcompress.plugins import registry
from hwcompress.search import rewards


@dataclass
class Candidate:
    """A student an agent proposes as its best so far.

    Attributes:
        keep: kept channels per channel group of the teacher (groups not named keep every channel).
        removed_units: units of the teacher replaced by identity (N2N's layer removal).
        episode: which scored student it was.
        accuracy: its accuracy on the reward-validation split during the search.
        cost: its predicted cost in the budget's unit.
        reward: the agent's reward for it.
        model: the trained student itself, when the agent trained it (N2N); fine-tuning starts from it.
        extra: anything else the agent wants in the report (JSON values).
    """

    keep: dict[str, int]
    removed_units: list[str] = field(default_factory=list)
    episode: int | None = None
    accuracy: float | None = None
    cost: float | None = None
    reward: float | None = None
    model: Any | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON values only (no model)."""
        return {"keep": dict(self.keep), "removed_units": list(self.removed_units), "episode": self.episode,
                "accuracy": self.accuracy, "cost": self.cost, "reward": self.reward, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        known = {"keep", "removed_units", "episode", "accuracy", "cost", "reward"}
        return cls(keep={str(k): int(v) for k, v in data["keep"].items()},
                   removed_units=list(data.get("removed_units") or []), episode=data.get("episode"),
                   accuracy=data.get("accuracy"), cost=data.get("cost"), reward=data.get("reward"),
                   extra={k: v for k, v in data.items() if k not in known})


@dataclass
class SearchContext:
    """What an agent searches against. Built by the pipeline; agents read it and call its methods.

    Attributes:
        teacher: the teacher ``nn.Module`` (never modify it; prune copies).
        example: a zero input of the search's input shape.
        layers: the teacher's analysed layer rows.
        groups: the teacher's prunable channel groups, in forward order.
        cost_model: prices a policy in the budget's unit and clamps (:class:`~hwcompress.search.cost.CostModel`).
        budget: the resolved :class:`~hwcompress.budget.Budget`.
        target: what the search aims at, in the cost model's unit (``budget.target``).
        episodes: how many students the agent may score in all.
        seed: the run's seed.
        warmup_episodes: random warm-up episodes, when the user gave them (agents with a warm-up use it).
        splits: the data (``train``, ``val``, ``test``).
        val_set: the reward-validation set (possibly a fixed subset of ``splits.val``).
        bn_calibration: train images for BatchNorm re-estimation before scoring (0: off).
        history: the records reported so far (restored on resume).
        best: the agent's best candidate so far (restored on resume, without its model).
        notes: lines for the report; agents may append.
        score: ``score(keep) -> accuracy``: the teacher pruned to ``keep``, BatchNorm re-estimated,
            scored on ``val_set``, no training (memoised). Under ``--quantize`` the student is quantized
            and scored by ONNX Runtime, and ``score(keep, precision)`` takes a group precision map.
            Where :attr:`racing`, ``score(keep, beat=a)`` may return the accuracy on the first third of
            ``val_set`` alone when that third shows the student falls clearly short of ``a``
            (:class:`~hwcompress.search.scoring.PolicyScorer`; :meth:`accuracy_to_beat` gives ``a``;
            :meth:`score_against_best` does both).
        racing: whether ``score`` takes ``beat`` (float students, ``--racing``, the default).
        log: ``log(message)`` for one-line progress messages.
        precision: under ``--quantize``, the :class:`~hwcompress.search.precision.PrecisionPlan`
            (which layers may run in int8; ``mixed``: which groups' precision an agent may choose,
            reported as ``Candidate.extra["precision"]``); None otherwise.
    """

    teacher: Any
    example: Any
    layers: Sequence[Any]
    groups: Sequence[Any]
    cost_model: Any
    budget: Budget
    episodes: int
    seed: int
    splits: Any
    val_set: Any
    score: Callable[[dict[str, int]], float]
    reward_mode: str = "budget"
    warmup_episodes: int | None = None
    bn_calibration: int = 256
    history: list[dict[str, Any]] = field(default_factory=list)
    best: Candidate | None = None
    notes: list[str] = field(default_factory=list)
    log: Callable[[str], None] = lambda _message: None
    on_report: Callable[[dict[str, Any]], None] = lambda _record: None
    on_checkpoint: Callable[[], None] = lambda: None
    on_total: Callable[[int], None] = lambda _total: None
    precision: Any = None
    racing: bool = False

    @property
    def target(self) -> float:
        return self.budget.target

    def reward(self, accuracy: float, cost: float) -> float:
        """The run's reward (``--reward``) for a student: see :mod:`hwcompress.search.rewards`."""
        return rewards.reward(self.reward_mode, accuracy, cost, self.budget.metric)

    def accuracy_to_beat(self, cost: float) -> float | None:
        """What a student of ``cost`` must score to out-reward :attr:`best`, for ``score(keep, beat=...)``;
        None when the scorer does not race or nothing is best yet."""
        if not self.racing or self.best is None or self.best.reward is None:
            return None
        return rewards.accuracy_to_beat(self.reward_mode, self.best.reward, cost, self.budget.metric)

    def score_against_best(self, keep: dict[str, int], cost: float) -> tuple[float, int | None]:
        """``score(keep)``, raced against :attr:`best` where :attr:`racing`: the accuracy, and how many
        validation images it rests on when it was raced (None: scored as ``score(keep)``). Agents record
        the count as ``val_images``; result.json's ``scoring.racing`` counts the episodes from it."""
        beat = self.accuracy_to_beat(cost)
        if beat is None:
            return self.score(keep), None
        accuracy = self.score(keep, beat=beat)
        return accuracy, getattr(self.score, "last_images", None)

    def report(self, record: dict[str, Any], candidate: Candidate | None = None) -> None:
        """One student was scored; ``candidate`` when it is the agent's new best."""
        self.history.append(record)
        if candidate is not None:
            self.best = candidate
        self.on_report(record)

    def checkpoint(self) -> None:
        """The agent's state is consistent: the pipeline may save it now."""
        self.on_checkpoint()

    def set_total(self, total: int) -> None:
        """How many students the agent will score in all, when that differs from ``episodes``."""
        self.on_total(total)


@runtime_checkable
class Agent(Protocol):
    """A search strategy (see the module docstring for the rules and a complete example)."""

    def search(self, context: SearchContext) -> None:
        """Score students against ``context`` until ``context.episodes`` are scored (or done)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the agent is (random generators included)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; called before :meth:`search` on resume."""
        ...


def agent_names() -> list[str]:
    return registry.agents.names()


def make_agent(name: str, options: dict[str, Any] | None = None) -> Agent:
    """The registered agent ``name`` built with ``options`` (``--agent-option``); refused in one line
    when unknown or when it rejects an option, before anything is measured."""
    entry = registry.agents.entry(name)
    if entry is None:
        raise UserError(f"unknown agent {name!r}; available: {', '.join(agent_names())}")
    options = dict(options or {})
    try:
        factory = entry.resolve()
    except Exception as error:  # a plugin's import string that does not resolve
        raise UserError(f"agent {name!r} from {entry.origin()} cannot be loaded: {type(error).__name__}: {error}") from None
    try:
        agent = factory(**options)
    except UserError:
        raise
    except (TypeError, ValueError) as error:
        raise UserError(f"agent {name!r} does not accept these settings ({', '.join(options) or 'none'}): {error}") from None
    missing = [method for method in ("search", "state_dict", "load_state_dict") if not callable(getattr(agent, method, None))]
    if missing:
        raise UserError(f"agent {name!r} from {entry.origin()} is not a hwcompress agent: it lacks {', '.join(missing)}() "
                        "(see docs/plugins.md)")
    return agent
