"""Context parallelism's sequence split, as torch's ``context_parallel`` cuts it (ring attention; Liu et al. 2023).

Causal attention costs more at the end of the sequence than at its start, so torch balances the ranks with a
head-tail split: the sequence is cut into ``2 * cp`` equal chunks and rank ``r`` takes chunks ``r`` and
``2 * cp - 1 - r`` (``_HeadTailLoadBalancer``; Megatron-LM's CP does the same). Running ring attention needs a
backend this trainer does not have on CPU/gloo, so ``cp > 1`` is refused (``apply.plan_layout``); the split and
its one-line check on the sequence length are what a run would use.
"""

from __future__ import annotations

from isoflop.errors import IsoflopError


def check_cp_split(seq_len: int, cp: int, tp: int = 1) -> None:
    """One line when ``seq_len`` cannot be split over ``cp`` ranks head-tail (``2 * cp`` equal chunks) and then,
    with sequence parallelism, each rank's ``seq_len / cp`` tokens over ``tp``."""
    if cp > 1 and seq_len % (2 * cp):
        raise IsoflopError(
            f"seq_len={seq_len} does not split into 2*cp = {2 * cp} equal chunks (context parallelism's "
            f"load-balanced split); use a multiple of {2 * cp}"
        )
    if seq_len % (cp * tp):
        raise IsoflopError(
            f"seq_len={seq_len} does not split over cp*tp = {cp}*{tp} (sequence parallelism); use a multiple of it"
        )


def cp_positions(seq_len: int, cp: int, rank: int) -> list[int]:
    """The token positions context-parallel rank ``rank`` of ``cp`` holds, in order: chunk ``rank`` then chunk
    ``2 * cp - 1 - rank`` of ``2 * cp``."""
    check_cp_split(seq_len, cp)
    if cp == 1:
        return list(range(seq_len))
    chunk = seq_len // (2 * cp)
    head, tail = rank * chunk, (2 * cp - 1 - rank) * chunk
    return [*range(head, head + chunk), *range(tail, tail + chunk)]
