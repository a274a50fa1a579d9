"""The settings of a search: one frozen, validated value, saved in the checkpoint so ``--resume``
needs nothing else.

Every setting has one default, here; ``None`` means "not given" where the default depends on the run
(threads and runs come from the device, the AMC warm-up from the episodes). A config is checked when
it is built (finite numbers, ranges, integers where they must be), never mutated afterwards: the
budget is resolved against the measured teacher into a new :class:`~hwcompress.budget.Budget` that the
run keeps beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from hwcompress.budget import Budget
from hwcompress.errors import UserError
from hwcompress.search.precision import QUANTIZE_MODES
from hwcompress.validate import number, whole

REWARDS = ("budget", "accuracy")
SCORING_PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_OUT = "hwcompress-out"
#: The final latency verdict: this many rounds interleaved with a reference model, then 2 more at a time while
#: the median ratio's confidence interval still holds the budget, up to ``SearchConfig.verdict_rounds``.
VERDICT_ROUNDS = 5
VERDICT_MAX_ROUNDS = 15


#: What students are timed beside (``SearchConfig.reference``).
REFERENCES = ("matched", "teacher")
#: Settings of the latency measurement that a MACs or parameter budget never uses: refused with one
#: (by the CLI under their flags, by ``compress()`` under these names), as ``--margin`` is.
LATENCY_ONLY = ("anchors", "context_students", "verdict_rounds", "reference")


def check_latency_only(budget: Budget | None, given: Any) -> None:
    """Refuse, as --margin is refused, the :data:`LATENCY_ONLY` settings among the names in ``given`` when
    ``budget`` is not a latency budget (they would do nothing). Worded with the CLI's flags."""
    if budget is None or budget.is_latency:
        return
    named = ["--" + name.replace("_", "-") for name in LATENCY_ONLY if name in given]
    if named:
        raise UserError(f"{', '.join(named)} {'applies' if len(named) == 1 else 'apply'} to latency budgets only "
                        f"(--latency-ms or --latency-ratio); drop {'it' if len(named) == 1 else 'them'} with --{budget.metric}")


#: N2N's students per controller epoch (``N2NSettings.rollouts``' default, here so that the config can check
#: ``episodes`` without importing PyTorch).
N2N_ROLLOUTS = 5


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search.

    Attributes:
        budget: what the student must meet (:class:`~hwcompress.budget.Budget`).
        agent: a registered agent (``amc``, ``n2n``, ``uniform``, ``random``, or a plugin's).
        agent_options: the agent's own settings (``--agent-option KEY=VALUE``).
        device, device_file: the target device (catalog name or a TOML file).
        model: the teacher (``--model`` string; None: the embedded ResNet-56 on digits).
        weights: a state-dict file for the teacher.
        data: ``digits``, an ImageFolder folder or ``pkg.module:factory`` (None: digits).
        input_shape: the input shape (None: the data's).
        episodes: how many students the agent may score.
        warmup_episodes: AMC's random warm-up episodes (None: a quarter of the episodes).
        seed: every random choice follows it: the same seed gives the same policy.
        reward: ``budget`` (-error) or ``accuracy`` (-error * ln cost, AMC's accuracy-guaranteed mode).
        lbound: the smallest preserve ratio of a channel group.
        finetune_epochs: distillation epochs for the final student.
        reconstruct: AMC's least-squares reconstruction of pruned layers before fine-tuning.
        lut: the latency LUT for the cost model (None: the device's, or recorded here and cached).
        out: the output folder (None: write nothing; the Python API's default).
        runs, threads: measurement settings on the device (None: the device's).
        val_limit: score each episode on at most this many validation images (None: all).
        anchors: students measured to anchor the latency cost model: 2 or 3 (None: 3 under ``quantize``,
            else 2; :attr:`anchor_count`).
        context_students: students profiled layer by layer on the device before the search, on which the
            latency cost model is fitted in context (:mod:`hwcompress.search.context`); 0: the LUT's prediction
            alone; None: :attr:`context_count` (6).
        bn_calibration: train images to re-estimate BatchNorm statistics on before scoring (0: off).
        reward_finetune_steps: distil each student the search scores from the teacher for this many SGD
            steps before its accuracy counts (:func:`~hwcompress.search.scoring.short_finetune`; Distiller's AMC
            ``--amc-ft-epochs``, HAQ's short-term retraining); 0 (the default): AMC's reward, no training.
        scoring_precision: the precision float students are evaluated in while the search scores them:
            ``fp32`` (the default), ``auto`` (bfloat16 where the CPU computes it natively, else fp32) or
            ``bf16``; bfloat16 scores 2.5x faster on an AMX CPU; over 8 seeds its searches ended as accurate
            on resnet18 at 64 px and 2.1 points lower on the embedded ResNet-56 (docs/benchmarks.md). The
            final student's accuracies (before and after fine-tuning) are fp32; the search-time scores
            (history, ``val_accuracy_during_search``) are in this precision.
        racing: an episode's student that falls clearly short of the best so far (3 standard errors and
            5 points) is scored on a third of the validation images (:class:`~hwcompress.search.scoring.PolicyScorer`; float students, AMC and
            the other episode agents); False: every image, always. A checkpoint from before the setting
            existed did not race.
        torch_threads: PyTorch intra-op threads for training and scoring.
        quantize: ``int8`` (every layer the device runs in int8 quantized, channels pruned on top) or
            ``mixed`` (the agent chooses int8 or float per channel group too); None: float students.
        skip_bad_images: leave out image files that cannot be read (counted in the report) instead of refusing.
        train_teacher: epochs to train a torchvision architecture from random weights on the data first
            (kept as ``teacher.pt`` in ``out``); 0: the teacher must come trained.
        verdict_rounds: the most rounds the final latency verdict may take: 5 interleaved rounds with the
            reference model (``reference``), then 2 more at a time while the median's confidence interval still holds the budget, up
            to this many (5: never more; odd, so that the median is one round).
        plots: write the PNG plots beside result.json (about 1 s a search; False: none, and a note says so).
        reference: what students are timed beside on the device: ``matched`` (the default: the teacher or a
            uniform student at the budget, whichever is nearer the student's size, so that other processes'
            load, which slows large and small models differently, cancels) or ``teacher`` (always the teacher).
    """

    budget: Budget
    agent: str = "amc"
    agent_options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    device_file: str | None = None
    model: str | None = None
    weights: str | None = None
    data: str | None = None
    input_shape: tuple[int, ...] | None = None
    episodes: int = 120
    warmup_episodes: int | None = None
    seed: int = 0
    reward: str = "budget"
    lbound: float = 0.2
    finetune_epochs: float = 8.0
    reconstruct: bool = False
    lut: str | None = None
    out: str | None = DEFAULT_OUT
    runs: int | None = None
    threads: int | None = None
    val_limit: int | None = None
    anchors: int | None = None
    context_students: int | None = None
    bn_calibration: int = 64
    reward_finetune_steps: int = 0
    scoring_precision: str = "fp32"
    racing: bool = True
    torch_threads: int = 1
    quantize: str | None = None
    skip_bad_images: bool = False
    train_teacher: int = 0
    verdict_rounds: int = VERDICT_MAX_ROUNDS
    plots: bool = True
    reference: str = "matched"

    def __post_init__(self) -> None:
        if not isinstance(self.budget, Budget):
            raise UserError("budget must be a hwcompress.Budget (Budget.latency_ms(x), Budget.latency_ratio(r), "
                            "Budget.macs(n) or Budget.params(n))")
        if not isinstance(self.agent, str) or not self.agent:
            raise UserError(f"--agent must be an agent name (got {self.agent!r})")
        if not isinstance(self.agent_options, dict):
            raise UserError("agent_options must be a dict of setting names to values")
        whole(self.episodes, "--episodes", 1)
        if self.warmup_episodes is not None and whole(self.warmup_episodes, "--warmup-episodes", 0) > self.episodes:
            raise UserError(f"--warmup-episodes {self.warmup_episodes} is more than --episodes {self.episodes}: the warm-up "
                            f"is part of the episodes; give at most {self.episodes}, or more --episodes")
        whole(self.seed, "--seed", 0)
        if self.reward not in REWARDS:
            raise UserError(f"--reward must be one of {', '.join(REWARDS)} (got {self.reward!r})")
        number(self.lbound, "--lbound", 0.0, 1.0, low_open=True, high_open=True)
        number(self.finetune_epochs, "--finetune-epochs", 0.0)
        for name in ("runs", "threads"):
            value = getattr(self, name)
            if value is not None:
                whole(value, f"--{name}", 1)
        if self.val_limit is not None:
            whole(self.val_limit, "--val-limit", 1)
        if self.anchors is not None:
            whole(self.anchors, "--anchors", 2, 3)
        if self.context_students is not None and whole(self.context_students, "--context-students", 0) in (1, 2):
            raise UserError(f"--context-students must be 0 (the LUT's prediction alone) or at least 3, to fit each layer's "
                            f"time on several widths (got {self.context_students})")
        whole(self.bn_calibration, "--bn-calibration", 0)
        whole(self.reward_finetune_steps, "--reward-finetune-steps", 0)
        if self.scoring_precision not in SCORING_PRECISIONS:
            raise UserError(f"--scoring-precision must be one of {', '.join(SCORING_PRECISIONS)} (got {self.scoring_precision!r})")
        if not isinstance(self.racing, bool):
            raise UserError(f"racing must be True or False (got {self.racing!r})")
        whole(self.torch_threads, "--torch-threads", 1)
        whole(self.train_teacher, "--train-teacher", 0)
        if not isinstance(self.plots, bool):
            raise UserError(f"plots must be True or False (got {self.plots!r})")
        whole(self.verdict_rounds, "--verdict-rounds", VERDICT_ROUNDS)
        if self.verdict_rounds % 2 == 0:
            raise UserError(f"--verdict-rounds must be odd, so that the median is one round (got {self.verdict_rounds}); "
                            f"try {self.verdict_rounds + 1}")
        if self.reference not in REFERENCES:
            raise UserError(f"--reference must be one of {', '.join(REFERENCES)} (got {self.reference!r})")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise UserError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)} (got {self.quantize!r})")
        if self.reward_finetune_steps and self.agent == "n2n":
            raise UserError("--agent n2n trains every student it scores itself (--agent-option student_steps=N); "
                            "drop --reward-finetune-steps")
        if self.quantize is not None and self.budget.metric != "latency_ms":
            raise UserError(f"--quantize applies to a latency budget (int8 changes the time, not the {self.budget.metric}); "
                            "use --latency-ms or --latency-ratio")
        if self.quantize == "mixed" and self.agent == "n2n":
            raise UserError("--agent n2n does not choose precisions; use --quantize int8 with it, or --agent amc "
                            "(or random) with --quantize mixed")
        if self.agent == "n2n":
            self._check_n2n_episodes()
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if len(shape) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
                raise UserError(f"--input-shape must be positive whole numbers like 1,3,224,224 (got {self.input_shape!r})")
            object.__setattr__(self, "input_shape", shape)

    def _check_n2n_episodes(self) -> None:
        """N2N splits ``episodes`` into controller epochs of ``rollouts`` students, at least one per stage; fewer
        episodes than two epochs would score more students than asked (unless both epoch counts are set)."""
        options = self.agent_options
        rollouts = options.get("rollouts", N2N_ROLLOUTS)
        if options.get("removal_epochs") is not None and options.get("shrink_epochs") is not None:
            return  # the epochs are given: --episodes does not count them
        if isinstance(rollouts, int) and not isinstance(rollouts, bool) and rollouts >= 1 and self.episodes < 2 * rollouts:
            raise UserError(f"--agent n2n needs --episodes of at least {2 * rollouts}: one controller epoch of {rollouts} "
                            f"students for each of its two stages (got {self.episodes}); raise --episodes, or lower "
                            "--agent-option rollouts")

    @property
    def anchor_count(self) -> int:
        """Students that anchor the latency cost model: ``anchors``, else 3 under ``--quantize`` and 2 otherwise.

        Int8 students bend away from the line through the teacher and the smallest student: on resnet18 at
        64 px (this project's Xeon, ONNX Runtime) a uniform int8 student at the budget measured 0.64x of the
        int8 teacher where the LUT said 0.49x, 23-40% over the two-anchor line, and the first repair
        measured each of six int8 students 15-65% over its prediction (docs/benchmarks.md). The third
        anchor, a uniform student at the budget, costs one measurement.
        """
        if self.anchors is not None:
            return int(self.anchors)
        return 3 if self.quantize else 2

    @property
    def context_count(self) -> int:
        """Students profiled to fit the latency cost model in context: ``context_students``, else
        :data:`~hwcompress.search.context.DEFAULT_STUDENTS` (0: the LUT's prediction alone).

        LUT units timed alone mislead inside a network: on 28 held-out students per network, the fit on six
        profiled students ranked them better on each of four (Kendall tau 0.49-0.75 against 0.24-0.59) and
        cut the anchored prediction's mean error on three (the embedded ResNet-56 6.1% -> 3.4%, int8 resnet18
        at 64 px 20.3% -> 6.6%, float mobilenet_v2 at 64 px 18.3% -> 12.2%); on int8 mobilenet_v2 at 64 px
        the anchors' measurement noise decided the level (``bench/context_fidelity.py``, docs/benchmarks.md).
        It costs seconds to a minute before the search.
        """
        if self.context_students is not None:
            return int(self.context_students)
        from hwcompress.search.context import DEFAULT_STUDENTS

        return DEFAULT_STUDENTS

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["budget"] = self.budget.to_dict()
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["budget"] = Budget.from_dict(values["budget"])
        values.setdefault("racing", False)  # saved before racing existed: its episodes were scored in full
        if values.get("input_shape"):
            values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)

    def differences(self, other: "SearchConfig") -> dict[str, tuple[Any, Any]]:
        """Settings that differ between ``self`` and ``other``: ``{name: (mine, theirs)}``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}

    def replace(self, **changes: Any) -> "SearchConfig":
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)
