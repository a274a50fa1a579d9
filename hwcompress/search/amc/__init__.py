"""AMC (He et al., ECCV 2018): a DDPG agent proposes a preserve ratio per channel group, under a clamp
that keeps the budget reachable; the uniform and random baselines walk the same episode."""
