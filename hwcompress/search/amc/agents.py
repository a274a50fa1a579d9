"""The agents that walk AMC's episode: ``amc`` (DDPG), and the ``uniform`` and ``random`` baselines.

Each episode visits the prunable channel groups in forward order (:class:`~hwcompress.search.amc.walker.EpisodeWalker`):
the agent proposes a preserve ratio per group, the walker rounds it to the device's channel multiple
and clamps it so the budget stays reachable. The student is then scored on the reward-validation
split without fine-tuning, and the reward (``--reward``) is what the agent learns from. The best
student is the one with the highest reward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hwcompress.search.agent import Candidate, SearchContext
from hwcompress.search.amc.ddpg import DDPGAgent, DDPGSettings
from hwcompress.search.amc.mixed import episode_shape, make_walker
from hwcompress.search.amc.walker import Episode, EpisodeWalker

#: AMC's exploration-noise decay per episode here: NNI's 0.99, not the original's 0.95. Over a
#: 120-episode run the original's sigma falls to 0.02 by episode 90 and the agent repeats itself
#: (measured at 0.5x over 3 seeds: 64-83 distinct policies of 120 and 81.7% best validation accuracy,
#: against 118-119 and 89.6%). ``--agent-option delta_decay=0.95`` restores the original.
AMC_DELTA_DECAY = 0.99


class EpisodeAgent:
    """The loop every AMC-style agent shares: walk, score, reward, learn, report, checkpoint."""

    name = "episode"

    def search(self, context: SearchContext) -> None:
        walker = make_walker(context)  # with a precision step per group under --quantize mixed
        self.prepare(context)
        for index in range(len(context.history), self.episode_count(context)):
            episode = self.propose(walker, index)
            cost = walker.cost(episode)
            images = None
            if episode.precision:
                accuracy = context.score(episode.keep, episode.precision)
            else:  # racing: a student clearly short of the best is scored on a third of the images
                accuracy, images = context.score_against_best(episode.keep, cost)
            reward = context.reward(accuracy, cost)
            self.learn(episode, reward, index)
            record = {"episode": index, "reward": reward, "accuracy": accuracy, "cost": cost,
                      "ratios": [round(r, 4) for r in episode.ratios], **({"val_images": images} if images else {})}
            extra = {"precision": dict(episode.precision)} if episode.precision else {}
            record.update(extra)
            best = context.best
            candidate = None
            if best is None or best.reward is None or reward > best.reward:
                candidate = Candidate(dict(episode.keep), episode=index, accuracy=accuracy, cost=cost, reward=reward,
                                      extra=extra)
            context.report(record, candidate)
            context.checkpoint()

    def episode_count(self, context: SearchContext) -> int:
        """How many episodes the run gets (all it may have, unless the agent knows better)."""
        return context.episodes

    def prepare(self, context: SearchContext) -> None:
        """Set up what depends on the run (networks, generators) before the first episode."""

    def propose(self, walker: EpisodeWalker, index: int) -> Episode:
        raise NotImplementedError

    def learn(self, episode: Episode, reward: float, index: int) -> None:
        """Learn from a scored episode (the baselines learn nothing)."""


class AMCAgent(EpisodeAgent):
    """DDPG proposes each ratio (warm-up episodes: uniform random), as in the original AMC.

    Options (``--agent-option``) are :class:`~hwcompress.search.amc.ddpg.DDPGSettings` fields; the
    defaults are the original's except ``delta_decay`` (:data:`AMC_DELTA_DECAY`) and ``warmup`` (a
    quarter of the episodes, NNI's rule, unless ``--warmup-episodes`` says).
    """

    name = "amc"

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)
        DDPGSettings(**{"warmup": 1, **self.options})  # refuse unknown or invalid settings now, not after measuring
        self.agent: DDPGAgent | None = None
        self._pending: dict[str, Any] | None = None

    def settings_for(self, episodes: int, seed: int, warmup_episodes: int | None = None) -> DDPGSettings:
        """The DDPG settings of a run of ``episodes`` with ``seed``: the options over the defaults."""
        warmup = warmup_episodes if warmup_episodes is not None else max(1, episodes // 4)
        return DDPGSettings(**{"warmup": warmup, "delta_decay": AMC_DELTA_DECAY, "seed": seed, **self.options})

    def prepare(self, context: SearchContext) -> None:
        if self._pending is not None:
            # A resumed agent continues with the settings it was saved with (its state holds them).
            self.agent = DDPGAgent.from_state_dict(self._pending)
            self._pending = None
        elif self.agent is None:
            settings = self.settings_for(context.episodes, context.seed, context.warmup_episodes)
            state_dim, steps = episode_shape(context)
            self.agent = DDPGAgent(state_dim, steps, settings)

    def propose(self, walker: EpisodeWalker, index: int) -> Episode:
        return walker.walk(lambda _t, state: self.agent.act(state, index))

    def learn(self, episode: Episode, reward: float, index: int) -> None:
        transitions = []
        n = len(episode.states)
        for t in range(n):
            next_state = episode.states[t + 1] if t + 1 < n else episode.states[t]
            # As in amc_search.py, the stored action is the agent's proposal (before the clamp); the
            # state's a_{t-1} column carries the ratio actually applied.
            transitions.append((episode.states[t], episode.proposed[t], next_state, t == n - 1))
        self.agent.observe_episode(transitions, reward, index)

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict() if self.agent is not None else self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.agent is not None:
            self.agent.load_state_dict(state["agent"])
        else:
            self._pending = state["agent"]

    def summary(self) -> dict[str, Any]:
        return {"ddpg": dataclasses.asdict(self.agent.settings)} if self.agent is not None else {}


class RandomAgent(EpisodeAgent):
    """Uniform random ratios under the same clamp: the sanity baseline every search must beat."""

    name = "random"

    def __init__(self) -> None:
        self.rng: np.random.Generator | None = None
        self._pending: dict[str, Any] | None = None

    def prepare(self, context: SearchContext) -> None:
        if self.rng is None:
            self.rng = np.random.default_rng(context.seed)
        if self._pending is not None:
            self.rng.bit_generator.state = self._pending
            self._pending = None

    def propose(self, walker: EpisodeWalker, _index: int) -> Episode:
        return walker.walk(lambda _t, _state: float(self.rng.uniform(0.0, 1.0)))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state if self.rng is not None else self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.rng is not None:
            self.rng.bit_generator.state = state["rng"]
        else:
            self._pending = state["rng"]


class UniformAgent(EpisodeAgent):
    """One ratio for every group, the largest that meets the budget (bisection on the cost model).

    Deterministic, so one episode is enough: it stops after the first.
    """

    name = "uniform"

    def __init__(self) -> None:
        self.ratio: float | None = None

    def episode_count(self, context: SearchContext) -> int:
        context.set_total(1)
        return 1

    def _policy(self, walker: EpisodeWalker, ratio: float) -> dict[str, int]:
        m = walker.cost_model
        return {g.name: max(m.min_channels(g), m.round(g, ratio)) for g in walker.groups}

    def propose(self, walker: EpisodeWalker, _index: int) -> Episode:
        if self.ratio is None:
            low, high = walker.cost_model.lbound, 1.0
            if walker.cost_model.cost(self._policy(walker, high)) <= walker.budget:
                low = high
            for _ in range(40):
                mid = (low + high) / 2
                if walker.cost_model.cost(self._policy(walker, mid)) <= walker.budget:
                    low = mid
                else:
                    high = mid
            self.ratio = low
        keep = self._policy(walker, self.ratio)
        episode = Episode(keep=keep)
        for g in walker.groups:
            episode.proposed.append(self.ratio)
            episode.ratios.append(keep[g.name] / g.channels)
        return episode

    def state_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ratio = state["ratio"]
