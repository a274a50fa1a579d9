"""The DDPG agent of AMC (He et al., ECCV 2018), as the original code (mit-han-lab/amc) runs it.

The agent follows ``lib/agent.py``, ``lib/memory.py`` and the ``train()`` loop of ``amc_search.py``
(see ``research/algorithms.md`` section 1.8). It is a stateful object whose whole state (networks,
targets, optimisers, replay buffer, reward baseline and random generators) round-trips through
:meth:`DDPGAgent.state_dict` / :meth:`DDPGAgent.load_state_dict`, so a search interrupted after any
episode and resumed in a fresh process gives the same actions and weights as one that ran straight
through.

Public API::

    DDPGSettings(hidden=300, lr_actor=1e-4, lr_critic=1e-3, tau=0.01, gamma=1.0, batch_size=64,
                 rmsize_per_layer=100, warmup=100, init_delta=0.5, delta_decay=0.95,
                 moving_alpha=0.5, seed=0)

    agent = DDPGAgent(state_dim, n_layers, settings)
    agent.is_warmup(episode) -> bool          # episode <= warmup, as the original's `episode <= args.warmup`
    agent.noise_sigma(episode) -> float       # init_delta * delta_decay ** (episode - warmup)
    agent.act(state, episode) -> float        # warm-up: Uniform(0, 1); then actor + truncated-normal noise
    agent.greedy(state) -> float              # actor output, no noise (export the best policy with it)
    agent.observe_episode(transitions, final_reward, episode) -> dict   # store all, then T updates
    agent.update() -> dict                    # one gradient step (observe_episode calls it)
    agent.state_dict() -> dict ; agent.load_state_dict(d) ; DDPGAgent.from_state_dict(d)

    Transition(state, action, next_state, terminal)   # what observe_episode takes (plain tuples work)
    ReplayBuffer                                       # the agent's memory, ``agent.memory``
    normalise_features(table)

A search drives it like this (the original ``train()`` loop)::

    for episode in range(start, n_episodes):
        s, transitions = env.reset(), []
        for t in range(n_layers):
            a = agent.act(s, episode)
            s2, done = env.step(a)
            transitions.append(Transition(s, a, s2, done))
            s = s2
        agent.observe_episode(transitions, budget_reward(accuracy), episode)   # hwcompress.search.rewards

Where this module departs from the original, and why:

* **Replay memory.** The original uses keras-rl's ``SequentialMemory``, which stores (s, a, r, terminal)
  and reads s' from the *next* slot. To give the last transition an s', ``amc_search.py`` appends one
  extra "bridge" entry per episode (the terminal observation, a noisy ``select_action`` and reward 0).
  Here each slot holds (s, a, r, s', terminal) explicitly, so there is no bridge entry. That means the
  capacity (``rmsize_per_layer * n_layers``) holds whole transitions, where the original lost one slot in
  T + 1 to bridges. It also removes a bug: after the ring buffer wraps, a bridge entry in the oldest
  slot can be sampled as a fake transition with reward 0. Sampling otherwise keeps the original's rule.
  Indices are drawn uniformly from every stored transition except the newest one (SequentialMemory
  cannot read the newest entry's s' yet), without replacement when there are at least
  ``batch_size`` candidates and with replacement otherwise (keras-rl's ``sample_batch_indexes``).
* **Randomness.** The original draws from the global ``random``/``np.random``/``torch`` generators. Here
  everything comes from generators the agent owns: network initialisation from ``torch`` seeded with
  ``seed`` inside a :func:`torch.random.fork_rng` block, so the global RNG is left as it was;
  minibatch indices from a ``torch.Generator``; warm-up actions and exploration noise from a
  ``numpy.random.Generator``. The truncated normal is sampled exactly, by rejection from
  N(mu, sigma^2) until the draw lies in [0, 1]. That is the same distribution as the original's
  ``scipy.stats.truncnorm.rvs`` and does not depend on the scipy version. The original also made one
  extra noisy ``select_action`` call per episode, for the bridge entry; it only consumed random
  numbers and is not made here.

Everything else is as in the original: the network shapes, PyTorch default initialisation (``--init_w``
is unused there too), hard-copied targets, Adam, the MSE critic loss, actor loss -mean Q(s, mu(s)),
soft updates, and the moving-average reward baseline. Warm-up is ``episode <= warmup``, so with the
default 100 the agent runs 101 random episodes. Every transition is stored with the episode's final
reward, and after each post-warm-up episode there is one update per stored transition. The module,
parameter and state-dict key names of :class:`Actor` and :class:`Critic` match the original's, so
its ``actor.pkl`` / ``critic.pkl`` load into them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "Actor",
    "Critic",
    "DDPGAgent",
    "DDPGSettings",
    "ReplayBuffer",
    "Transition",
    "normalise_features",
]

#: Version tag stored in :meth:`DDPGAgent.state_dict`, checked on load.
STATE_FORMAT = "hwcompress.ddpg/1"

# The agent's own noise bounds are fixed at [0, 1] in the original (AGENT: `self.lbound = 0.  # args.lbound`);
# the environment's lbound (minimum preserve ratio) is applied by the clamp, not here.
_ACTION_LOW = 0.0
_ACTION_HIGH = 1.0


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DDPGSettings:
    """Hyper-parameters of the AMC DDPG agent; defaults are the original's (``amc_search.py``).

    Attributes:
        hidden: Width of both hidden layers of actor and critic (``--hidden1``/``--hidden2``, 300).
        lr_actor: Adam learning rate of the actor (``--lr_a``, 1e-4).
        lr_critic: Adam learning rate of the critic (``--lr_c``, 1e-3).
        tau: Soft target-update rate (``--tau``, 0.01).
        gamma: Discount (``--discount``, 1.0: the reward only arrives at the end of the episode).
        batch_size: Minibatch size (``--bsize``, 64).
        rmsize_per_layer: Replay capacity per prunable layer (``--rmsize``, 100); the buffer holds
            ``rmsize_per_layer * n_layers`` transitions.
        warmup: Episodes ``0..warmup`` (inclusive) are random and train nothing (``--warmup``, 100).
        init_delta: Initial sigma of the truncated-normal exploration noise (``--init_delta``, 0.5).
        delta_decay: Per-episode decay of sigma (``--delta_decay``; 0.95 in the original, 0.99 in NNI).
        moving_alpha: Step of the moving-average reward baseline (AGENT ``moving_alpha``, 0.5).
        seed: Seeds the agent's own generators (initialisation, minibatches, actions).
    """

    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    gamma: float = 1.0
    batch_size: int = 64
    rmsize_per_layer: int = 100
    warmup: int = 100
    init_delta: float = 0.5
    delta_decay: float = 0.95
    moving_alpha: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DDPGSettings.{name} must be a positive integer, got {value!r}")

        for name in ("hidden", "batch_size", "rmsize_per_layer"):
            positive_int(name)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"DDPGSettings.warmup must be an integer >= 0, got {self.warmup!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"DDPGSettings.seed must be an integer >= 0, got {self.seed!r}")
        for name in ("lr_actor", "lr_critic", "init_delta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"DDPGSettings.{name} must be a positive number, got {value!r}")
        for name in ("tau", "gamma", "delta_decay", "moving_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
                raise ValueError(f"DDPGSettings.{name} must be in (0, 1], got {value!r}")


# --------------------------------------------------------------------------------------------------
# Networks (AGENT `Actor`, `Critic`; attribute names kept so original checkpoints load)
# --------------------------------------------------------------------------------------------------
class Actor(nn.Module):
    """mu(s): Linear(S->h) ReLU Linear(h->h) ReLU Linear(h->1) Sigmoid, a preserve ratio in [0, 1]."""

    def __init__(self, state_dim: int, hidden: int = 300) -> None:
        super().__init__()
        self.fc1 = nn.Linear(state_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)
        self.relu = nn.ReLU()
        self.sigmoid = nn.Sigmoid()

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """Map states ``[B, S]`` to actions ``[B, 1]``."""
        out = self.relu(self.fc1(state))
        out = self.relu(self.fc2(out))
        return self.sigmoid(self.fc3(out))


class Critic(nn.Module):
    """Q(s, a): ReLU(fc11(s) + fc12(a)) -> Linear(h->h) -> ReLU -> Linear(h->1)."""

    def __init__(self, state_dim: int, hidden: int = 300) -> None:
        super().__init__()
        self.fc11 = nn.Linear(state_dim, hidden)
        self.fc12 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)
        self.relu = nn.ReLU()

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Map states ``[B, S]`` and actions ``[B, 1]`` to values ``[B, 1]``."""
        out = self.relu(self.fc11(state) + self.fc12(action))
        out = self.relu(self.fc2(out))
        return self.fc3(out)


# --------------------------------------------------------------------------------------------------
# Replay memory
# --------------------------------------------------------------------------------------------------
class Transition(NamedTuple):
    """One step of an episode, as handed to :meth:`DDPGAgent.observe_episode`.

    Attributes:
        state: Observation the action was taken in, shape ``[state_dim]``.
        action: The action taken (the preserve ratio the agent proposed, before the env's clamp,
            as the original stores it).
        next_state: The observation that followed. For the terminal step its value does not matter:
            the ``(1 - terminal)`` mask removes it from the target.
        terminal: True for the last layer of the episode.
    """

    state: Any
    action: float
    next_state: Any
    terminal: bool


class ReplayBuffer:
    """Ring buffer of (s, a, r, s', terminal) with the sampling rule of keras-rl's ``SequentialMemory``.

    Stored in float64, as the original's ``sample_and_split`` builds ``'double'`` arrays. The batch is
    cast to float32 only when it meets the networks.

    Args:
        capacity: Maximum number of transitions; the oldest is overwritten first.
        state_dim: Length of an observation.
    """

    def __init__(self, capacity: int, state_dim: int) -> None:
        if capacity < 2:
            # One slot is always the newest transition, which is never sampled (see `sample`).
            raise ValueError(f"replay capacity must be at least 2, got {capacity}")
        self.capacity = int(capacity)
        self.state_dim = int(state_dim)
        self._states = torch.zeros(self.capacity, self.state_dim, dtype=torch.float64)
        self._actions = torch.zeros(self.capacity, 1, dtype=torch.float64)
        self._rewards = torch.zeros(self.capacity, 1, dtype=torch.float64)
        self._next_states = torch.zeros(self.capacity, self.state_dim, dtype=torch.float64)
        self._terminals = torch.zeros(self.capacity, 1, dtype=torch.bool)
        self._start = 0  # physical slot of the oldest transition
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def append(self, state: np.ndarray, action: float, reward: float, next_state: np.ndarray, terminal: bool) -> None:
        """Store one transition, overwriting the oldest when full (keras-rl ``RingBuffer.append``)."""
        if self._length < self.capacity:
            self._length += 1
        else:
            self._start = (self._start + 1) % self.capacity
        slot = (self._start + self._length - 1) % self.capacity
        self._states[slot] = torch.from_numpy(state)
        self._actions[slot, 0] = float(action)
        self._rewards[slot, 0] = float(reward)
        self._next_states[slot] = torch.from_numpy(next_state)
        self._terminals[slot, 0] = bool(terminal)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Draw a minibatch.

        As in keras-rl's ``sample_batch_indexes(0, nb_entries - 1, batch_size)``, candidates are all
        transitions but the newest. The draw is without replacement when there are at least
        ``batch_size`` candidates and with replacement otherwise.

        Args:
            batch_size: Rows to draw.
            generator: Source of the indices (the agent's own).

        Returns:
            ``(states, actions, rewards, next_states, not_terminal)``, float64, each ``[batch_size, ...]``;
            ``not_terminal`` is 1.0 where the transition is not terminal (the original's ``terminal1_batch``).

        Raises:
            RuntimeError: Fewer than two transitions are stored.
        """
        candidates = self._length - 1
        if candidates < 1:
            raise RuntimeError("the replay buffer needs at least two transitions before it can be sampled")
        if candidates >= batch_size:
            logical = torch.randperm(candidates, generator=generator)[:batch_size]
        else:
            logical = torch.randint(0, candidates, (batch_size,), generator=generator)
        slots = (logical + self._start) % self.capacity
        not_terminal = (~self._terminals[slots]).to(torch.float64)
        return (self._states[slots], self._actions[slots], self._rewards[slots], self._next_states[slots], not_terminal)

    def contents(self) -> dict[str, torch.Tensor]:
        """Copies of the stored transitions, oldest first (keys ``states``, ``actions``, ``rewards``,
        ``next_states``, ``terminals``)."""
        slots = (torch.arange(self._length) + self._start) % self.capacity
        return {
            "states": self._states[slots].clone(),
            "actions": self._actions[slots].clone(),
            "rewards": self._rewards[slots].clone(),
            "next_states": self._next_states[slots].clone(),
            "terminals": self._terminals[slots].clone(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Capacity plus the contents in logical order (sampling uses logical positions, so the
        physical layout need not be kept)."""
        return {"capacity": self.capacity, "state_dim": self.state_dim, **self.contents()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a buffer of the same capacity and state size."""
        if int(state["capacity"]) != self.capacity or int(state["state_dim"]) != self.state_dim:
            raise ValueError(
                f"replay buffer mismatch: saved capacity {state['capacity']} / state_dim {state['state_dim']}, "
                f"this buffer {self.capacity} / {self.state_dim}"
            )
        n = int(state["states"].shape[0])
        if n > self.capacity:
            raise ValueError(f"saved replay buffer holds {n} transitions, more than its capacity {self.capacity}")
        self._start, self._length = 0, n
        self._states[:n] = state["states"]
        self._actions[:n] = state["actions"]
        self._rewards[:n] = state["rewards"]
        self._next_states[:n] = state["next_states"]
        self._terminals[:n] = state["terminals"]


# --------------------------------------------------------------------------------------------------
# Agent
# --------------------------------------------------------------------------------------------------
class DDPGAgent:
    """AMC's DDPG agent: one continuous action (a preserve ratio) per layer, one reward per episode.

    Args:
        state_dim: Length of the layer embedding (10 in the original).
        n_layers: Prunable layers, i.e. steps per episode; sizes the replay buffer.
        settings: Hyper-parameters; the original's defaults when omitted.
    """

    def __init__(self, state_dim: int, n_layers: int, settings: DDPGSettings | None = None) -> None:
        if isinstance(state_dim, bool) or not isinstance(state_dim, int) or state_dim < 1:
            raise ValueError(f"state_dim must be a positive integer, got {state_dim!r}")
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
        self.settings = settings if settings is not None else DDPGSettings()
        self.state_dim = state_dim
        self.n_layers = n_layers
        s = self.settings

        # Default PyTorch initialisation, as the original, but from our seed and without touching the
        # caller's global RNG. Only the CPU generator is forked and seeded (torch.manual_seed would also
        # reseed CUDA, which fork_rng(devices=[]) does not restore). Construction order as in the
        # original's DDPG.__init__: actor, actor_target, critic, critic_target.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(s.seed)
            self.actor = Actor(state_dim, s.hidden)
            self.actor_target = Actor(state_dim, s.hidden)
            self.critic = Critic(state_dim, s.hidden)
            self.critic_target = Critic(state_dim, s.hidden)
        _hard_update(self.actor_target, self.actor)
        _hard_update(self.critic_target, self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=s.lr_actor)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=s.lr_critic)

        self.memory = ReplayBuffer(s.rmsize_per_layer * n_layers, state_dim)
        # Two independent streams: numpy (PCG64) for actions, torch (MT19937) for minibatch indices.
        self._np_rng = np.random.default_rng(s.seed)
        self._torch_gen = torch.Generator().manual_seed(s.seed)

        #: Moving-average reward baseline b; None until the first update (AGENT `moving_average`).
        self.baseline: float | None = None
        #: Gradient steps taken so far.
        self.n_updates = 0
        #: Episodes passed to :meth:`observe_episode` so far (a resumed search can start from it).
        self.episodes_observed = 0

    # -- acting ---------------------------------------------------------------------------------
    def is_warmup(self, episode: int) -> bool:
        """True for the random warm-up episodes. The original tests ``episode <= args.warmup``, so
        episodes 0..warmup inclusive are warm-up."""
        return episode <= self.settings.warmup

    def noise_sigma(self, episode: int) -> float:
        """Sigma of the exploration noise: ``init_delta * delta_decay ** (episode - warmup)``
        (AGENT ``select_action``)."""
        s = self.settings
        return s.init_delta * s.delta_decay ** (episode - s.warmup)

    def greedy(self, state: Sequence[float] | np.ndarray) -> float:
        """The actor's action for ``state``, without noise."""
        x = torch.from_numpy(self._check_state(state)).to(torch.float32).unsqueeze(0)
        with torch.no_grad():
            return float(self.actor(x)[0, 0])

    def act(self, state: Sequence[float] | np.ndarray, episode: int) -> float:
        """The action to take in ``state`` during ``episode``.

        Warm-up episodes draw Uniform(0, 1) (AGENT ``random_action``). Later ones draw from a normal
        centred on the actor's output with sigma :meth:`noise_sigma`, truncated to [0, 1]
        (AGENT ``select_action``).

        Args:
            state: The observation, length ``state_dim``.
            episode: The 0-based episode number.

        Returns:
            A preserve ratio in [0, 1].
        """
        if self.is_warmup(episode):
            self._check_state(state)
            return float(self._np_rng.uniform(_ACTION_LOW, _ACTION_HIGH))
        mu = self.greedy(state)
        action = _truncated_normal(self._np_rng, mu, self.noise_sigma(episode), _ACTION_LOW, _ACTION_HIGH)
        # The original clips after truncnorm too; a no-op kept for float safety.
        return float(np.clip(action, _ACTION_LOW, _ACTION_HIGH))

    # -- learning -------------------------------------------------------------------------------
    def observe_episode(
        self,
        transitions: Iterable[Transition | tuple[Any, float, Any, bool]],
        final_reward: float,
        episode: int,
    ) -> dict[str, Any]:
        """Store a finished episode and train on it, as the original's end-of-episode block.

        Every transition is stored with the episode's *final* reward. After a post-warm-up episode,
        each append is followed by one :meth:`update`, so an episode of T steps gives T gradient steps.
        After a warm-up episode the transitions are stored and nothing is trained.

        Args:
            transitions: The episode's steps in order, as :class:`Transition` or
                ``(state, action, next_state, terminal)`` tuples.
            final_reward: The episode's reward (:mod:`hwcompress.search.rewards`).
            episode: The 0-based episode number the transitions came from.

        Returns:
            ``{"updates": int, "critic_loss": float, "actor_loss": float, "baseline": float | None}``.
            The losses are means over this episode's updates, and NaN when there were none.
        """
        steps = [Transition(*t) for t in transitions]
        if not steps:
            raise ValueError("an episode needs at least one transition")
        reward = float(final_reward)
        if not math.isfinite(reward):
            raise ValueError(f"final_reward must be finite, got {final_reward!r}")
        checked = [
            (
                self._check_state(t.state),
                self._check_action(t.action),
                self._check_state(t.next_state),
                bool(t.terminal),
            )
            for t in steps
        ]
        train = not self.is_warmup(episode)
        critic_losses: list[float] = []
        actor_losses: list[float] = []
        for state, action, next_state, terminal in checked:
            self.memory.append(state, action, reward, next_state, terminal)
            if train:
                info = self.update()
                critic_losses.append(info["critic_loss"])
                actor_losses.append(info["actor_loss"])
        self.episodes_observed += 1
        return {
            "updates": len(critic_losses),
            "critic_loss": float(np.mean(critic_losses)) if critic_losses else math.nan,
            "actor_loss": float(np.mean(actor_losses)) if actor_losses else math.nan,
            "baseline": self.baseline,
        }

    def update(self) -> dict[str, float]:
        """One gradient step of critic and actor on a minibatch, then the soft target update
        (AGENT ``update_policy``).

        Returns:
            ``{"critic_loss", "actor_loss", "batch_reward_mean", "baseline"}``; the baseline is the
            value after this step's update.
        """
        s = self.settings
        states, actions, rewards, next_states, not_terminal = self.memory.sample(s.batch_size, self._torch_gen)

        # Moving-average baseline over minibatch means: set to the first batch mean, then
        # b += alpha * (mean - b). Computed in float64 like the original's numpy arithmetic.
        batch_mean = float(rewards.mean())
        if self.baseline is None:
            self.baseline = batch_mean
        else:
            self.baseline += s.moving_alpha * (batch_mean - self.baseline)
        advantages = (rewards - self.baseline).to(torch.float32)

        states32 = states.to(torch.float32)
        next_states32 = next_states.to(torch.float32)
        with torch.no_grad():
            next_q = self.critic_target(next_states32, self.actor_target(next_states32))
        target_q = advantages + s.gamma * not_terminal.to(torch.float32) * next_q

        self.critic_optim.zero_grad()
        q = self.critic(states32, actions.to(torch.float32))
        value_loss = nn.functional.mse_loss(q, target_q)
        value_loss.backward()
        self.critic_optim.step()

        # Like the original, this backward also fills the critic's gradients. They are cleared by the
        # next critic zero_grad before they could matter.
        self.actor_optim.zero_grad()
        policy_loss = -self.critic(states32, self.actor(states32)).mean()
        policy_loss.backward()
        self.actor_optim.step()

        _soft_update(self.actor_target, self.actor, s.tau)
        _soft_update(self.critic_target, self.critic, s.tau)
        self.n_updates += 1
        return {
            "critic_loss": float(value_loss.detach()),
            "actor_loss": float(policy_loss.detach()),
            "batch_reward_mean": batch_mean,
            "baseline": self.baseline,
        }

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: networks, targets, optimisers, replay buffer,
        baseline, counters and both generators' states.

        The result is a deep copy, so training on afterwards leaves it unchanged. It holds only
        tensors and plain Python values, so ``torch.save`` / ``torch.load`` (including
        ``weights_only=True``, the default) round-trip it.
        """
        return {
            "format": STATE_FORMAT,
            "state_dim": self.state_dim,
            "n_layers": self.n_layers,
            "settings": dataclasses.asdict(self.settings),
            "actor": copy.deepcopy(self.actor.state_dict()),
            "actor_target": copy.deepcopy(self.actor_target.state_dict()),
            "critic": copy.deepcopy(self.critic.state_dict()),
            "critic_target": copy.deepcopy(self.critic_target.state_dict()),
            "actor_optim": copy.deepcopy(self.actor_optim.state_dict()),
            "critic_optim": copy.deepcopy(self.critic_optim.state_dict()),
            "memory": self.memory.state_dict(),
            "baseline": self.baseline,
            "n_updates": self.n_updates,
            "episodes_observed": self.episodes_observed,
            "numpy_rng": copy.deepcopy(self._np_rng.bit_generator.state),
            "torch_rng": self._torch_gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output. The agent must have the same dimensions and settings.

        Raises:
            ValueError: The state is from another format, dimensions or settings.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} agent state (format={state.get('format')!r})")
        if (state["state_dim"], state["n_layers"]) != (self.state_dim, self.n_layers):
            raise ValueError(
                f"agent state is for state_dim={state['state_dim']}, n_layers={state['n_layers']}; "
                f"this agent has state_dim={self.state_dim}, n_layers={self.n_layers}"
            )
        mine = dataclasses.asdict(self.settings)
        differing = sorted(k for k in set(mine) | set(state["settings"]) if mine.get(k) != state["settings"].get(k))
        if differing:
            detail = ", ".join(f"{k}: saved {state['settings'].get(k)!r} vs {mine.get(k)!r}" for k in differing)
            raise ValueError(f"agent state was saved with other settings ({detail}); use DDPGAgent.from_state_dict")
        self.actor.load_state_dict(state["actor"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.memory.load_state_dict(state["memory"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.n_updates = int(state["n_updates"])
        self.episodes_observed = int(state["episodes_observed"])
        self._np_rng.bit_generator.state = copy.deepcopy(state["numpy_rng"])
        self._torch_gen.set_state(state["torch_rng"])

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DDPGAgent:
        """Build an agent from :meth:`state_dict` output, taking dimensions and settings from it."""
        agent = cls(int(state["state_dim"]), int(state["n_layers"]), DDPGSettings(**state["settings"]))
        agent.load_state_dict(state)
        return agent

    # -- helpers --------------------------------------------------------------------------------
    def _check_state(self, state: Sequence[float] | np.ndarray) -> np.ndarray:
        arr = np.asarray(state, dtype=np.float64).reshape(-1)
        if arr.shape[0] != self.state_dim:
            raise ValueError(f"state has {arr.shape[0]} features, the agent expects {self.state_dim}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("state contains NaN or infinity")
        return np.ascontiguousarray(arr)

    @staticmethod
    def _check_action(action: float) -> float:
        arr = np.asarray(action, dtype=np.float64)
        if arr.size != 1:
            raise ValueError(f"action must be a single number, got shape {arr.shape}")
        value = float(arr.reshape(-1)[0])
        if not math.isfinite(value):
            raise ValueError(f"action must be finite, got {action!r}")
        return value


def _hard_update(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s parameters into ``target`` (AGENT ``hard_update``)."""
    with torch.no_grad():
        for t, p in zip(target.parameters(), source.parameters()):
            t.copy_(p)


def _soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * source``, written as the original does (AGENT ``soft_update``)."""
    with torch.no_grad():
        for t, p in zip(target.parameters(), source.parameters()):
            t.copy_(t * (1.0 - tau) + p * tau)


def _truncated_normal(rng: np.random.Generator, mu: float, sigma: float, low: float, high: float) -> float:
    """Exact draw from N(mu, sigma^2) truncated to [low, high], by rejection.

    ``mu`` is a sigmoid output, so it lies in [low, high]. Then at least about 48% of draws land inside
    when sigma <= 0.5, which is always the case after warm-up with the default ``init_delta``, and about
    ``(high - low) / (2.5 * sigma)`` for larger sigma. A sigma that has underflowed to 0 gives ``mu``.
    """
    if not (math.isfinite(mu) and low <= mu <= high):
        raise ValueError(f"noise centre must be in [{low}, {high}], got {mu!r} (has the actor diverged?)")
    if sigma <= 0.0:
        return mu
    for _ in range(1_000_000):
        x = float(rng.normal(mu, sigma))
        if low <= x <= high:
            return x
    raise RuntimeError(f"truncated normal rejection sampling did not converge (mu={mu}, sigma={sigma})")


# --------------------------------------------------------------------------------------------------
# State features and rewards (research/algorithms.md 1.3 and 1.6)
# --------------------------------------------------------------------------------------------------
def normalise_features(table: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Min-max scale each column of a layer-embedding table over the layers.

    Each column becomes ``(x - min) / (max - min)``. A column with max == min is left unchanged, as in
    the original's ``_build_state_embedding``. The input is not modified.

    Args:
        table: ``[n_layers, n_features]``.

    Returns:
        A float64 copy, normalised.
    """
    arr = np.array(table, dtype=np.float64, copy=True)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"expected a non-empty [n_layers, n_features] table, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("feature table contains NaN or infinity")
    fmin = arr.min(axis=0)
    span = arr.max(axis=0) - fmin
    cols = span > 0
    arr[:, cols] = (arr[:, cols] - fmin[cols]) / span[cols]
    return arr
