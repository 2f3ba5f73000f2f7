"""Policy spellings the benchmarks share beyond `MOE_POLICY` names: `POLICY+d`, a lookahead distance (a
predictor policy with a bundle predicting d MoE layers ahead, `exact+2`; `oracle+d`, the oracle issued d
layers ahead, MOE_ORACLE_AHEAD=d), and `overprovision@m` (`overprovision@6+2`), a predictor policy that
issues each tap's top m (`MOE_OVERPROVISION=m`). The decode bench and the serving soak parse them here, by
the same rules. Imports `engine.api.policies` (the names; no torch) only.
"""

from __future__ import annotations

from engine.api.policies import PREDICTOR_POLICIES


def policy_width(policy: str) -> int | None:
    """m of `overprovision@m` (`overprovision@6+2`: each tap's top 6), None without a width; ValueError for
    a width on another policy or one that is not a number >= 1."""
    name, at, width = policy.partition("+")[0].partition("@")
    if not at:
        return None
    if name != "overprovision" or not width.isdigit() or int(width) < 1:
        raise ValueError(f"policy {policy!r}: a width is overprovision@m with m >= 1 (MOE_OVERPROVISION=m)")
    return int(width)


def split_policy(policy: str) -> tuple[str, int]:
    """(`MOE_POLICY` name, lookahead distance): ("exact", 2) for `exact+2`, ("overprovision", 2) for
    `overprovision@6+2` (its width: `policy_width`), ("oracle", 1) for `oracle+1`, (name, 0) without a
    distance. ValueError when the distance is not a number >= 1, a distance is on a policy other than
    `oracle` and the predictor policies, or the width is malformed."""
    head, plus, ahead = policy.partition("+")
    name = head.partition("@")[0]
    policy_width(policy)
    if not plus:
        return name, 0
    if name != "oracle" and name not in PREDICTOR_POLICIES:
        raise ValueError(f"policy {policy!r}: only oracle and the predictor policies take a distance (+d)")
    if not ahead.isdigit() or int(ahead) < 1:
        raise ValueError(f"policy {policy!r}: a lookahead policy is POLICY+d with d = 1, 2, ...")
    return name, int(ahead)
