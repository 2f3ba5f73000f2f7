"""Policy spellings the benchmarks share beyond `MOE_POLICY` names: `overprovision@m` (`overprovision@6+2`), a
predictor policy that issues each tap's top m (`MOE_OVERPROVISION=m`). Imports nothing but the standard library.
"""

from __future__ import annotations


def policy_width(policy: str) -> int | None:
    """m of `overprovision@m` (`overprovision@6+2`: each tap's top 6), None without a width; ValueError for
    a width on another policy or one that is not a number >= 1."""
    name, at, width = policy.partition("+")[0].partition("@")
    if not at:
        return None
    if name != "overprovision" or not width.isdigit() or int(width) < 1:
        raise ValueError(f"policy {policy!r}: a width is overprovision@m with m >= 1 (MOE_OVERPROVISION=m)")
    return int(width)
