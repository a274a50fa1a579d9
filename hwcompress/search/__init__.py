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


def _n2n(**kw: Any) -> Any:
    from hwcompress.search.n2n import N2NSettings

    return N2NSettings(**kw)


#: The built-in agents by name. amc, uniform and random walk AMC's episode over channel groups;
#: n2n runs its own two-stage loop (hwcompress/search/n2n.py) on the same pipeline.
BUILTIN_AGENTS: dict[str, Callable[..., Any]] = {"amc": _amc, "uniform": _uniform, "random": _random, "n2n": _n2n}
