"""Search agents: AMC (DDPG), N2N (REINFORCE), and the uniform/random baselines."""

from typing import Any, Callable


def _amc(**kw: Any) -> Any:
    from hwcompress.search.amc import AMCPolicy

    return AMCPolicy(**kw)


def _uniform(**kw: Any) -> Any:
    from hwcompress.search.amc import UniformPolicy

    return UniformPolicy(**kw)


def _random(**kw: Any) -> Any:
    from hwcompress.search.amc import RandomPolicy

    return RandomPolicy(**kw)


#: Agents that walk AMC's episode over channel groups; the registry exposes them by name.
BUILTIN_AGENTS: dict[str, Callable[..., Any]] = {"amc": _amc, "uniform": _uniform, "random": _random}
