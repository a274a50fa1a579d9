"""N2N's two controllers, its reward and its REINFORCE learner, independent of models and data.

N2N (Ashok et al., ICLR 2018; original code ``anubhavashok/N2N``) compresses a teacher in two stages,
each driven by a policy network trained with REINFORCE:

1. **Layer removal** (:class:`RemovalPolicy`): a bidirectional LSTM reads one feature vector per unit
   of the network and decides, for each, *keep* or *remove*.
2. **Layer shrinkage** (:class:`ShrinkagePolicy`): an autoregressive LSTM walks the channel groups of
   the stage-1 network and picks, for each, a width ratio from a small discrete set.

Each sampled student is built and briefly distilled by the search pipeline (elsewhere), and its
accuracy and size give the reward :func:`n2n_reward`, penalised by :func:`constrained_reward` when the
student breaks the budget. :class:`Reinforce` turns a batch of ``(log_prob, reward)`` pairs into one
policy-gradient step. A typical epoch::

    learner = Reinforce(policy, generator=torch.Generator().manual_seed(seed), lr=DEFAULT_REMOVAL_LR)
    x = normalise(raw_features)
    rollouts = [policy.sample(x, learner.generator, forced_keep=mask) for _ in range(5)]
    rewards = [score(actions) for actions, _ in rollouts]          # build, distil, measure
    learner.update([lp for _, lp in rollouts], rewards)

Deliberate differences from the original code (``rl.py``, ``run.py``, ``controllers/*.py`` at
``anubhavashok/N2N``; see ``research/algorithms.md`` section 2):

* Features are normalised per column (:func:`normalise`); the original fed raw integers (type index,
  kernel, stride, out-channels, padding), so out-channels in the hundreds swamped the rest.
* The shrinkage LSTM cells live in an ``nn.ModuleList``; the original kept them in a plain list, so they
  were never registered and Adam only trained the output ``Linear``.
* The shrinkage ratio set is :data:`RATIOS` (DESIGN.md), each value once. The original's ``lookup``
  repeated 0.5 five times, an implicit prior towards x0.5; :data:`ORIGINAL_RATIO_PRIOR` reproduces that
  prior through the ``ratio_prior`` setting if wanted.
* The shrinkage policy picks one ratio per channel *group* (the output width is all that changes
  inside residual blocks); the original picked a ratio for each of the 5 features of every layer and
  ignored most of them.
* Forced units (first unit, strided/shape-changing units, classifier) are masked *inside* the policy:
  their action is fixed and contributes no log-probability. The original sampled them and then
  overwrote the action, yet still reinforced the overwritten sample.
* :func:`annealed_epsilon` clamps before raising to the 4th power. The original
  ``min(1, max(0, (1 - e/15) ** 4))`` clamps after, so epsilon rises again past epoch 15 and is back to
  1 (no penalty at all) from epoch 30 of its 100.
* REINFORCE uses each rollout's own advantage ``R_i - b`` with an exponential moving-average baseline
  and one Adam step per epoch; the original used the batch mean ``avgR - b`` for every rollout, with
  ``b = (sum of previous epochs' mean rewards) / (e + 1)``, and stepped per rollout.
* All randomness (initial weights, sampling) comes from ``torch.Generator`` objects the caller owns;
  the global RNG is neither read nor advanced, and :meth:`Reinforce.state_dict` carries the sampling
  generator's state so a resumed search continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_REMOVAL_LR",
    "DEFAULT_SHRINKAGE_LR",
    "EPSILON_HORIZON",
    "INVALID_REWARD",
    "KEEP",
    "ORIGINAL_RATIO_PRIOR",
    "RATIOS",
    "REMOVE",
    "Reinforce",
    "RemovalPolicy",
    "ShrinkagePolicy",
    "annealed_epsilon",
    "constrained_reward",
    "n2n_reward",
    "normalise",
]

#: Removal action index: drop the unit.
REMOVE: int = 0
#: Removal action index: keep the unit (the original's ``1 = keep``).
KEEP: int = 1

#: Width ratios the shrinkage policy chooses from (DESIGN.md). The original's ``lookup`` was
#: ``[0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]``.
RATIOS: tuple[float, ...] = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: The initial distribution over :data:`RATIOS` that the original's repeated 0.5 implied (5 of 11
#: entries were 0.5); pass as ``ShrinkagePolicy(ratio_prior=...)`` to start from the same bias.
ORIGINAL_RATIO_PRIOR: tuple[float, ...] = (1 / 11, 5 / 11, 1 / 11, 1 / 11, 1 / 11, 1 / 11, 1 / 11)

#: Reward of a student that cannot be built or is not smaller than its teacher (``rl.py``: ``Rs[i] = -1``).
INVALID_REWARD: float = -1.0
#: Epochs over which the constraint penalty anneals to its full strength (``rl.py getEpsilon``: 15).
EPSILON_HORIZON: float = 15.0

#: Adam learning rate of the removal controller (``run.py``: 0.003).
DEFAULT_REMOVAL_LR: float = 3e-3
#: Adam learning rate of the shrinkage controller. ``run.py`` used 0.1, very large for Adam on an LSTM;
#: ``experiments/ar_run_param_clean.py`` used 0.01, which we take.
DEFAULT_SHRINKAGE_LR: float = 1e-2


# --------------------------------------------------------------------------------------------------
# Features


def normalise(
    features: torch.Tensor | Sequence[Sequence[float]],
    method: Literal["minmax", "standard"] = "minmax",
) -> torch.Tensor:
    """Normalise unit features per column, across the units of one network.

    The original fed raw values (``Layer.getRepresentation``: type index, kernel, stride, out-channels,
    padding), so out-channels (tens to hundreds) dominated the LSTM's input. We rescale each column
    across the sequence, as AMC does for its layer embedding.

    Args:
        features: ``[T, F]`` raw features, one row per unit (or channel group).
        method: ``"minmax"`` maps each column to ``[0, 1]``; ``"standard"`` to zero mean and unit
            (population) standard deviation. A constant column becomes all zeros either way.

    Returns:
        A new float32 tensor ``[T, F]`` on the input's device.

    Raises:
        ValueError: If ``features`` is not 2-D or ``method`` is unknown.
    """
    x = torch.as_tensor(features).detach().to(torch.float64)
    if x.dim() != 2:
        raise ValueError(f"features must be 2-D [units, features], got shape {tuple(x.shape)}")
    if method == "minmax":
        lo = x.min(dim=0).values
        span = x.max(dim=0).values - lo
        out = (x - lo) / torch.where(span > 0, span, torch.ones_like(span))
    elif method == "standard":
        std = x.std(dim=0, unbiased=False)
        out = (x - x.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))
    else:
        raise ValueError(f"unknown normalisation {method!r}; use 'minmax' or 'standard'")
    return out.to(torch.float32)


# --------------------------------------------------------------------------------------------------
# Rewards


def n2n_reward(acc_student: float, acc_teacher: float, params_student: float, params_teacher: float) -> float:
    """N2N's reward ``R = (A / A_t) * C * (2 - C)`` with ``C = 1 - params_student / params_teacher``.

    ``C * (2 - C)`` rewards compression with diminishing returns (it is 0 at no compression, 0.75 at
    half the parameters and 1 at all of them). The formula is applied as is: a student not smaller
    than its teacher gets ``C <= 0`` and a reward ``<= 0``; the original marked those invalid
    (:data:`INVALID_REWARD`), which is the caller's decision (``rl.py Reward``).

    Args:
        acc_student: Student accuracy (any scale, the same as ``acc_teacher``).
        acc_teacher: Reference accuracy, measured once for the network being compressed.
        params_student: Student parameter count (or any size measure).
        params_teacher: Teacher parameter count in the same unit.

    Returns:
        The reward as a float.

    Raises:
        ValueError: If ``acc_teacher`` or ``params_teacher`` is not positive.
    """
    if not acc_teacher > 0:
        raise ValueError(f"acc_teacher must be positive, got {acc_teacher}")
    if not params_teacher > 0:
        raise ValueError(f"params_teacher must be positive, got {params_teacher}")
    c = 1.0 - float(params_student) / float(params_teacher)
    return (float(acc_student) / float(acc_teacher)) * c * (2.0 - c)


def annealed_epsilon(epoch: float, horizon: float = EPSILON_HORIZON) -> float:
    """Penalty annealing ``eps = max(0, 1 - epoch / horizon) ** 4``: 1 at epoch 0, 0 from ``horizon`` on.

    The original (``rl.py getEpsilon``) wrote ``min(1, max(0, (1 - e/15) ** 4))``. The 4th power is never
    negative, so that clamp does nothing and epsilon grows again after epoch 15 (0.012 at 20, 1 at 30),
    silently switching the penalty off for most of a 100-epoch run. We clamp the base first, which is
    what the original evidently meant: no penalty at first, a full one (``R' = -1``) from ``horizon``.

    Args:
        epoch: Controller epoch (may be fractional).
        horizon: Epoch at which the penalty reaches full strength.

    Returns:
        ``eps`` in ``[0, 1]``.
    """
    if not horizon > 0:
        raise ValueError(f"horizon must be positive, got {horizon}")
    return min(1.0, max(0.0, 1.0 - float(epoch) / float(horizon)) ** 4)


def constrained_reward(reward: float, budget_broken: bool, epoch: float, horizon: float = EPSILON_HORIZON) -> float:
    """Annealed penalty for a student that breaks the budget (``rl.py getConstrainedReward``).

    ``R' = (eps - 1) + eps * R`` when broken, else ``R``, with ``eps = annealed_epsilon(epoch)``: a
    violating student is scored like any other at epoch 0 and gets exactly -1 from ``horizon`` on.

    Args:
        reward: Unconstrained reward (:func:`n2n_reward`).
        budget_broken: Whether the student violates the budget (latency, size, accuracy floor).
        epoch: Controller epoch.
        horizon: See :func:`annealed_epsilon`.

    Returns:
        The constrained reward.
    """
    if not budget_broken:
        return float(reward)
    eps = annealed_epsilon(epoch, horizon)
    return (eps - 1.0) + eps * float(reward)


# --------------------------------------------------------------------------------------------------
# Helpers


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    # A fixed seed rather than the global RNG: a policy built without a generator is still reproducible.
    return generator if generator is not None else torch.Generator().manual_seed(0)


@torch.no_grad()
def _uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    """Fill ``tensor`` from U(-bound, bound) drawn from ``generator`` (on the generator's device)."""
    draw = torch.rand(tensor.shape, generator=generator, device=generator.device, dtype=torch.float32)
    tensor.copy_((draw * 2.0 - 1.0) * bound)


def _init_like_torch(module: nn.Module, generator: torch.Generator) -> None:
    """Re-create PyTorch's default initialisation of LSTM / LSTMCell / Linear, from ``generator``.

    LSTMs use U(-1/sqrt(hidden), 1/sqrt(hidden)) for every tensor; ``Linear``'s default (Kaiming uniform
    with a = sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias alike.
    """
    for sub in module.modules():
        if isinstance(sub, (nn.LSTM, nn.LSTMCell)):
            bound = 1.0 / math.sqrt(sub.hidden_size)
            for p in sub.parameters(recurse=False):
                _uniform_(p, bound, generator)
        elif isinstance(sub, nn.Linear):
            bound = 1.0 / math.sqrt(sub.in_features)
            for p in sub.parameters(recurse=False):
                _uniform_(p, bound, generator)


def _check_features(features: torch.Tensor, feature_dim: int) -> None:
    if features.dim() != 2 or features.shape[0] < 1 or features.shape[1] != feature_dim:
        raise ValueError(f"features must be [units >= 1, {feature_dim}], got shape {tuple(features.shape)}")


def _mask(mask: torch.Tensor | Sequence[bool] | None, length: int, device: torch.device, name: str) -> torch.Tensor:
    """A bool tensor ``[length]`` (all False when ``mask`` is None)."""
    if mask is None:
        return torch.zeros(length, dtype=torch.bool, device=device)
    m = torch.as_tensor(mask, device=device).to(torch.bool)
    if m.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(m.shape)}")
    return m


def _uniforms(n: int, generator: torch.Generator) -> torch.Tensor:
    # Draw on the generator's own device (a CUDA generator cannot fill a CPU tensor), then use on CPU.
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).cpu()


# --------------------------------------------------------------------------------------------------
# Removal policy


class RemovalPolicy(nn.Module):
    """N2N's layer-removal controller: a bidirectional LSTM deciding keep/remove for every unit.

    As ``controllers/LSTM.py``: ``nn.LSTM(feature_dim, hidden, num_layers, bidirectional=True)`` from
    zero state, then per step ``Linear(2 * hidden -> 2)`` and a softmax over ``{remove, keep}``
    (action 1 = keep). The original sized the Linear as ``num_layers * hidden``, correct only because
    it had 2 layers; here it is ``2 * hidden`` (two directions) whatever the depth.

    Args:
        feature_dim: Length of each unit's feature vector (5 in the original).
        hidden_size: LSTM hidden size per direction (30 in the original).
        num_layers: Stacked LSTM layers (2 in the original).
        keep_bias: Added to the *keep* logit's bias at initialisation (learnable afterwards), so the
            first policy keeps about ``sigmoid(keep_bias)`` of the units (2.0 -> ~88%). Removing many
            layers at once mostly yields students that cannot learn, wasting early epochs on -1-ish
            rewards. The original had none (0.0, ~50% kept), which stays the default.
        generator: Source of the initial weights; None uses a fixed seed (0). The global RNG is not used.
    """

    def __init__(
        self,
        feature_dim: int,
        hidden_size: int = 30,
        num_layers: int = 2,
        keep_bias: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if feature_dim < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError("feature_dim, hidden_size and num_layers must be positive")
        self.feature_dim = feature_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.keep_bias = float(keep_bias)
        # Built on the meta device so that PyTorch's own initialisation does not draw from (and
        # advance) the global RNG; the real values come from `generator` in reset_parameters.
        self.lstm = nn.LSTM(feature_dim, hidden_size, num_layers, bidirectional=True, device="meta")
        self.head = nn.Linear(2 * hidden_size, 2, device="meta")
        self.to_empty(device="cpu")
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise all weights from ``generator`` (PyTorch's default ranges plus ``keep_bias``)."""
        _init_like_torch(self, _default_generator(generator))
        with torch.no_grad():
            self.head.bias[KEEP] += self.keep_bias

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Per-unit log-probabilities ``[T, 2]`` over ``(remove, keep)``.

        Args:
            features: ``[T, feature_dim]``, ideally :func:`normalise`-d.
        """
        x = features.to(device=self.head.weight.device, dtype=self.head.weight.dtype)
        _check_features(x, self.feature_dim)
        out, _ = self.lstm(x.unsqueeze(1))  # (T, batch=1, 2*hidden), zero initial state as the original
        return F.log_softmax(self.head(out.squeeze(1)), dim=-1)

    def sample(
        self,
        features: torch.Tensor,
        generator: torch.Generator,
        forced_keep: torch.Tensor | Sequence[bool] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one keep/remove decision per unit.

        One uniform is drawn per unit, forced or not, so the generator advances by the same amount
        whatever the mask.

        Args:
            features: ``[T, feature_dim]``.
            generator: Sampling randomness (owned by the caller; see :class:`Reinforce`).
            forced_keep: ``[T]`` bools; True units are always kept and add nothing to the log-prob.

        Returns:
            ``(actions, log_prob)``: LongTensor ``[T]`` (1 = keep, 0 = remove) and the scalar
            log-probability of the free decisions, differentiable w.r.t. the policy's parameters.
        """
        logp = self(features)
        forced = _mask(forced_keep, logp.shape[0], logp.device, "forced_keep")
        u = _uniforms(logp.shape[0], generator)
        p_keep = logp.detach()[:, KEEP].exp().to(device="cpu", dtype=torch.float64)
        actions = (u < p_keep).long().to(logp.device)
        actions = torch.where(forced, torch.full_like(actions, KEEP), actions)
        return actions, self._sum_log_prob(logp, actions, forced)

    def log_prob(
        self,
        features: torch.Tensor,
        actions: torch.Tensor | Sequence[int],
        forced_keep: torch.Tensor | Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """Log-probability (scalar, differentiable) of ``actions`` under the current policy.

        Raises:
            ValueError: If an action is not 0/1, the length is wrong, or a forced unit is not kept.
        """
        logp = self(features)
        a = torch.as_tensor(actions, device=logp.device).long()
        if a.shape != (logp.shape[0],) or bool(((a != KEEP) & (a != REMOVE)).any()):
            raise ValueError(f"actions must be {logp.shape[0]} values in {{0, 1}}")
        forced = _mask(forced_keep, logp.shape[0], logp.device, "forced_keep")
        if bool((forced & (a != KEEP)).any()):
            raise ValueError("a forced unit has action 'remove'")
        return self._sum_log_prob(logp, a, forced)

    def entropy(
        self, features: torch.Tensor, forced_keep: torch.Tensor | Sequence[bool] | None = None
    ) -> torch.Tensor:
        """Entropy (scalar, differentiable) of the free decisions; the units are independent given the input."""
        logp = self(features)
        forced = _mask(forced_keep, logp.shape[0], logp.device, "forced_keep")
        h = -(logp.exp() * logp).sum(dim=-1)
        return (h * (~forced).to(h.dtype)).sum()

    @staticmethod
    def _sum_log_prob(logp: torch.Tensor, actions: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
        # Multiply by the mask rather than index it, so the result stays in the graph (zero gradient)
        # even when every unit is forced.
        picked = logp.gather(1, actions.unsqueeze(1)).squeeze(1)
        return (picked * (~forced).to(picked.dtype)).sum()


# --------------------------------------------------------------------------------------------------
# Shrinkage policy


class ShrinkagePolicy(nn.Module):
    """N2N's layer-shrinkage controller: an autoregressive LSTM choosing a width ratio per channel group.

    As ``controllers/AutoregressiveParam.py`` (two stacked ``LSTMCell``s, hidden 30, ``Linear`` and
    softmax over the ratio set, hidden state carried across steps), with these changes:

    * the cells are registered (``nn.ModuleList``) so they are trained; the original's plain list left
      them at their random initial values;
    * one step per channel group rather than one per (layer, feature);
    * the previous choice is fed back explicitly: step ``g``'s input is group ``g``'s features
      concatenated with a one-hot of step ``g-1``'s choice (zeros at ``g = 0``). The original instead
      multiplied one feature of the current layer by the chosen ratio.

    Args:
        feature_dim: Length of each group's feature vector.
        ratios: The discrete ratio set (default :data:`RATIOS`). Each value must lie in ``(0, 1]``;
            repeats are allowed (the original's 11-entry list with 0.5 five times works as is).
        hidden_size: LSTM hidden size (30 in the original).
        num_layers: Stacked LSTM cells (2 in the original).
        ratio_prior: Optional initial distribution over ``ratios``: the output bias is set to its log
            (and the output weights to zero), so the first policy samples from it exactly.
            :data:`ORIGINAL_RATIO_PRIOR` recreates the original's bias towards 0.5.
        generator: Source of the initial weights; None uses a fixed seed (0). The global RNG is not used.
    """

    def __init__(
        self,
        feature_dim: int,
        ratios: Sequence[float] = RATIOS,
        hidden_size: int = 30,
        num_layers: int = 2,
        ratio_prior: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        ratios = tuple(float(r) for r in ratios)
        if not ratios or not all(0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"ratios must be a non-empty set of values in (0, 1], got {ratios}")
        if feature_dim < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError("feature_dim, hidden_size and num_layers must be positive")
        if ratio_prior is not None:
            prior = torch.as_tensor(ratio_prior, dtype=torch.float64)
            if prior.shape != (len(ratios),) or bool((prior <= 0).any()):
                raise ValueError(f"ratio_prior must be {len(ratios)} positive values")
        self.ratios: tuple[float, ...] = ratios
        self.ratio_prior: tuple[float, ...] | None = None if ratio_prior is None else tuple(map(float, ratio_prior))
        self.feature_dim = feature_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        k = len(ratios)
        # Meta device: see RemovalPolicy.__init__ (keep PyTorch's init off the global RNG).
        self.cells = nn.ModuleList(
            nn.LSTMCell(feature_dim + k if i == 0 else hidden_size, hidden_size, device="meta")
            for i in range(num_layers)
        )
        self.head = nn.Linear(hidden_size, k, device="meta")
        self.to_empty(device="cpu")
        self.reset_parameters(generator)

    @property
    def num_choices(self) -> int:
        """Size of the ratio set."""
        return len(self.ratios)

    @property
    def fixed_choice(self) -> int:
        """Index of ratio 1.0, the choice imposed on fixed groups.

        Raises:
            ValueError: If the ratio set has no 1.0.
        """
        if 1.0 not in self.ratios:
            raise ValueError(f"fixed groups need ratio 1.0 in the set, got {self.ratios}")
        return self.ratios.index(1.0)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise all weights from ``generator`` (PyTorch's default ranges; see ``ratio_prior``)."""
        _init_like_torch(self, _default_generator(generator))
        if self.ratio_prior is not None:
            prior = torch.tensor(self.ratio_prior, dtype=torch.float64)
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.copy_(torch.log(prior / prior.sum()).to(self.head.bias.dtype))

    def forward(
        self,
        features: torch.Tensor,
        choices: torch.Tensor | Sequence[int],
    ) -> torch.Tensor:
        """Per-group log-probabilities ``[G, K]`` given the choices made so far (teacher forcing).

        Row ``g`` is the distribution the policy had at step ``g`` when steps ``0..g-1`` chose
        ``choices[0..g-1]``; ``choices[G-1]`` is not needed.
        """
        x = self._features(features)
        c = self._check_choices(choices, x.shape[0], x.device)
        return self._run(x, choices=c, uniforms=None, fixed=None)[1]

    def sample(
        self,
        features: torch.Tensor,
        generator: torch.Generator,
        fixed: torch.Tensor | Sequence[bool] | None = None,
    ) -> tuple[torch.Tensor, list[float], torch.Tensor]:
        """Sample one ratio per group, autoregressively.

        One uniform is drawn per group, fixed or not, so the generator advances by the same amount
        whatever the mask.

        Args:
            features: ``[G, feature_dim]``.
            generator: Sampling randomness (owned by the caller; see :class:`Reinforce`).
            fixed: ``[G]`` bools; True groups keep ratio 1.0 (``ratios`` must contain it) and add
                nothing to the log-prob. Their choice is still fed to the next step.

        Returns:
            ``(choices, ratios, log_prob)``: LongTensor ``[G]`` of indices into ``self.ratios``, the
            chosen ratios as Python floats (exact set values, so ``int(c * r)`` rounds as expected),
            and the scalar differentiable log-probability of the free choices.
        """
        x = self._features(features)
        fixed_m = _mask(fixed, x.shape[0], x.device, "fixed")
        uniforms = _uniforms(x.shape[0], generator)
        choices, logp = self._run(x, choices=None, uniforms=uniforms, fixed=fixed_m)
        return choices, [self.ratios[int(c)] for c in choices.tolist()], self._sum_log_prob(logp, choices, fixed_m)

    def log_prob(
        self,
        features: torch.Tensor,
        choices: torch.Tensor | Sequence[int],
        fixed: torch.Tensor | Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """Log-probability (scalar, differentiable) of ``choices`` under the current policy.

        Raises:
            ValueError: If a choice is out of range, the length is wrong, or a fixed group is not at 1.0.
        """
        x = self._features(features)
        c = self._check_choices(choices, x.shape[0], x.device)
        fixed_m = _mask(fixed, x.shape[0], x.device, "fixed")
        if bool(fixed_m.any()) and bool((c[fixed_m] != self.fixed_choice).any()):
            raise ValueError("a fixed group has a ratio other than 1.0")
        _, logp = self._run(x, choices=c, uniforms=None, fixed=fixed_m)
        return self._sum_log_prob(logp, c, fixed_m)

    def entropy(
        self,
        features: torch.Tensor,
        choices: torch.Tensor | Sequence[int],
        fixed: torch.Tensor | Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """Sum over free groups of each step's entropy along the trajectory ``choices`` (scalar, differentiable)."""
        x = self._features(features)
        c = self._check_choices(choices, x.shape[0], x.device)
        fixed_m = _mask(fixed, x.shape[0], x.device, "fixed")
        _, logp = self._run(x, choices=c, uniforms=None, fixed=fixed_m)
        h = -(logp.exp() * logp).sum(dim=-1)
        return (h * (~fixed_m).to(h.dtype)).sum()

    # -- internals ---------------------------------------------------------------------------------

    def _features(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(features).to(device=self.head.weight.device, dtype=self.head.weight.dtype)
        _check_features(x, self.feature_dim)
        return x

    def _check_choices(self, choices: torch.Tensor | Sequence[int], length: int, device: torch.device) -> torch.Tensor:
        c = torch.as_tensor(choices, device=device).long()
        if c.shape != (length,) or bool(((c < 0) | (c >= self.num_choices)).any()):
            raise ValueError(f"choices must be {length} indices in [0, {self.num_choices})")
        return c

    def _run(
        self,
        features: torch.Tensor,
        choices: torch.Tensor | None,
        uniforms: torch.Tensor | None,
        fixed: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Walk the groups; sample (``uniforms`` given) or follow ``choices``. Returns (choices, logp [G, K])."""
        x = self._features(features)
        g_count, k = x.shape[0], self.num_choices
        if choices is not None:
            choices = choices.to(x.device)
        fixed_l = [False] * g_count if fixed is None else fixed.tolist()
        zeros = x.new_zeros(1, self.hidden_size)
        state = [(zeros, zeros) for _ in self.cells]  # zero initial state, as the original
        prev = x.new_zeros(1, k)  # "no previous choice" at the first group
        rows: list[torch.Tensor] = []
        taken: list[int] = []
        for g in range(g_count):
            h = torch.cat([x[g : g + 1], prev], dim=1)
            for i, cell in enumerate(self.cells):
                state[i] = cell(h, state[i])
                h = state[i][0]
            logp = F.log_softmax(self.head(h), dim=-1).squeeze(0)
            rows.append(logp)
            if fixed_l[g]:
                c = self.fixed_choice
            elif choices is not None:
                c = int(choices[g])
            else:
                # Inverse-CDF sampling from one uniform: deterministic for a given generator state.
                cdf = torch.cumsum(logp.detach().exp().to(device="cpu", dtype=torch.float64), dim=0)
                c = min(int(torch.searchsorted(cdf, uniforms[g : g + 1], right=True)), k - 1)
            taken.append(c)
            prev = F.one_hot(torch.tensor([c], device=x.device), k).to(x.dtype)
        return torch.tensor(taken, dtype=torch.long, device=x.device), torch.stack(rows)

    @staticmethod
    def _sum_log_prob(logp: torch.Tensor, choices: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        picked = logp.gather(1, choices.unsqueeze(1)).squeeze(1)
        return (picked * (~fixed).to(picked.dtype)).sum()


# --------------------------------------------------------------------------------------------------
# REINFORCE


class Reinforce:
    """REINFORCE with a moving-average baseline, one Adam step per controller epoch.

    Each epoch the caller samples N rollouts with ``policy.sample(..., self.generator)``, scores them
    and calls :meth:`update` once with the N log-probs and rewards. The loss is

        ``-(1/N) * sum_i (R_i - b) * log_prob_i  -  entropy_coef * mean_i entropy_i``

    where ``b`` is the baseline *before* this epoch's rewards are folded in (so it does not depend on
    ``R_i``). Then ``b <- decay * b + (1 - decay) * mean_i R_i``.

    Differences from the original (``rl.py Controller.update_controller``, ``run.py``): it gave every
    rollout the same advantage ``avgR - b`` (batch mean), with ``b = (sum of previous epochs' mean
    rewards) / (e + 1)``, starting at 0 and biased low; here each rollout has its own advantage (the
    DESIGN's choice, standard REINFORCE) and the baseline is an exponential average seeded with the
    first epoch's mean (so the first update is already centred). The original had no gradient clipping
    and no entropy bonus.

    Args:
        policy: A :class:`RemovalPolicy`, :class:`ShrinkagePolicy` or any module whose log-probs are passed.
        generator: The sampling generator the caller uses for this search; its state is saved and
            restored with the learner so that a resumed search draws the same rollouts.
        lr: Adam learning rate (:data:`DEFAULT_REMOVAL_LR` / :data:`DEFAULT_SHRINKAGE_LR`).
        baseline_decay: Weight of the old baseline in the moving average, in ``[0, 1)``.
        entropy_coef: Entropy bonus weight (0 = none, as the original); needs ``entropies`` in :meth:`update`.
        max_grad_norm: Clip the global gradient norm to this (None = no clipping).
        initial_baseline: Baseline for the first epoch; None uses that epoch's own mean reward.
    """

    def __init__(
        self,
        policy: nn.Module,
        generator: torch.Generator,
        lr: float = DEFAULT_REMOVAL_LR,
        baseline_decay: float = 0.9,
        entropy_coef: float = 0.0,
        max_grad_norm: float | None = 5.0,
        initial_baseline: float | None = None,
    ) -> None:
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}")
        self.policy = policy
        self.generator = generator
        self.lr = float(lr)
        self.baseline_decay = float(baseline_decay)
        self.entropy_coef = float(entropy_coef)
        self.max_grad_norm = max_grad_norm
        self.baseline: float | None = None if initial_baseline is None else float(initial_baseline)
        self.updates = 0
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=self.lr)

    def update(
        self,
        log_probs: list[torch.Tensor],
        rewards: list[float],
        entropies: list[torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """One policy-gradient step from one epoch's rollouts.

        Args:
            log_probs: Differentiable scalar log-probabilities of the N sampled rollouts, computed by the
                current policy (from ``sample`` or ``log_prob``).
            rewards: The N rewards (:data:`INVALID_REWARD` for students that could not be built).
            entropies: The N rollouts' entropies (``policy.entropy``); required when ``entropy_coef > 0``.

        Returns:
            ``{"update", "loss", "baseline", "next_baseline", "mean_reward", "max_reward", "advantages",
            "grad_norm", "entropy"}``: ``baseline`` is the value used for the advantages, ``grad_norm``
            the norm before clipping, ``entropy`` the mean entropy (None when not given).

        Raises:
            ValueError: On mismatched or empty inputs, non-finite rewards, or a missing entropy.
        """
        n = len(log_probs)
        if n == 0 or n != len(rewards):
            raise ValueError(f"need the same positive number of log-probs and rewards, got {n} and {len(rewards)}")
        r = [float(x) for x in rewards]
        if not all(math.isfinite(x) for x in r):
            raise ValueError(f"rewards must be finite, got {r}")
        if self.entropy_coef > 0 and entropies is None:
            raise ValueError("entropy_coef > 0 needs the rollouts' entropies")
        if entropies is not None and len(entropies) != n:
            raise ValueError(f"need {n} entropies, got {len(entropies)}")

        mean_r = sum(r) / n
        b = mean_r if self.baseline is None else self.baseline
        advantages = [x - b for x in r]
        loss = -torch.stack([a * lp.reshape(()) for a, lp in zip(advantages, log_probs)]).sum() / n
        mean_entropy = None
        if entropies is not None:
            ent = torch.stack([e.reshape(()) for e in entropies]).mean()
            mean_entropy = float(ent.detach())
            if self.entropy_coef > 0:
                loss = loss - self.entropy_coef * ent

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.policy.parameters() if p.grad is not None]
        clip = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if params else 0.0
        self.optimizer.step()

        self.baseline = self.baseline_decay * b + (1.0 - self.baseline_decay) * mean_r
        self.updates += 1
        return {
            "update": self.updates,
            "loss": float(loss.detach()),
            "baseline": b,
            "next_baseline": self.baseline,
            "mean_reward": mean_r,
            "max_reward": max(r),
            "advantages": advantages,
            "grad_norm": grad_norm,
            "entropy": mean_entropy,
        }

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy) of everything a resumed search needs.

        Keys: ``policy``, ``optimizer``, ``baseline``, ``updates``, ``generator`` (the sampling
        generator's state) and ``settings`` (lr, baseline_decay, entropy_coef, max_grad_norm).
        ``torch.save``-able.
        """
        return copy.deepcopy(
            {
                "policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline,
                "updates": self.updates,
                "generator": self.generator.get_state(),
                "settings": {
                    "lr": self.lr,
                    "baseline_decay": self.baseline_decay,
                    "entropy_coef": self.entropy_coef,
                    "max_grad_norm": self.max_grad_norm,
                },
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into this learner, its policy and its generator (in place).

        The saved settings replace the constructor's, so the continuation matches the original run.
        """
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"].clone())
        settings = state.get("settings", {})
        self.lr = float(settings.get("lr", self.lr))
        self.baseline_decay = float(settings.get("baseline_decay", self.baseline_decay))
        self.entropy_coef = float(settings.get("entropy_coef", self.entropy_coef))
        self.max_grad_norm = settings.get("max_grad_norm", self.max_grad_norm)
