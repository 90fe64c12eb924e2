"""The DeviceMesh of a layout, torchtitan's dimension order: ``(pp, dp_replicate, dp_shard, cp, tp)``.

Tensor parallel is innermost (neighbouring ranks, inside a node), pipeline parallel outermost, as in
Megatron-LM (Narayanan et al. 2021, Sec. 3) and ``isoflop.perf.layout``. Every check runs before the
process group does any work, and fails with one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from isoflop.errors import IsoflopError
from isoflop.spec.model import ModelSpec
from isoflop.train.parallel.context import check_cp_split

DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")


@dataclass(frozen=True)
class MeshLayout:
    """Degrees of one layout; ``dp = dp_replicate * dp_shard``."""

    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    cp: int = 1
    tp: int = 1

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def world(self) -> int:
        return self.pp * self.dp * self.cp * self.tp

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, d) for d in DIMS)

    def coords(self, rank: int) -> dict[str, int]:
        """This rank's index along each mesh dimension (row-major over ``DIMS``, tp fastest)."""
        out: dict[str, int] = {}
        for name, size in zip(reversed(DIMS), reversed(self.shape), strict=True):
            out[name] = rank % size
            rank //= size
        return out

    def dp_rank(self, rank: int) -> int:
        c = self.coords(rank)
        return c["dp_replicate"] * self.dp_shard + c["dp_shard"]


def resolve_layout(
    world: int, tp: int, pp: int, cp: int, dp: int | None, replicate: int, spec: ModelSpec, seq_len: int
) -> MeshLayout:
    """Derive ``dp`` from the world size and check the layout against it and the model (one-line errors)."""
    inner = tp * pp * cp
    if world % inner:
        raise IsoflopError(
            f"tp*pp*cp = {tp}*{pp}*{cp} = {inner} does not divide the {world} launched processes; "
            f"launch a multiple of {inner} (torchrun --nproc-per-node) or change the layout"
        )
    derived = world // inner
    if dp is not None and dp != derived:
        raise IsoflopError(
            f"tp*pp*cp*dp = {inner * dp} must equal the {world} launched processes; "
            f"launch {inner * dp} processes or set parallel.dp to {derived}"
        )
    if derived % replicate:
        raise IsoflopError(f"parallel.replicate={replicate} does not divide dp={derived}; pick a divisor of dp")
    if spec.n_heads % tp or spec.n_kv_heads % tp:
        raise IsoflopError(
            f"tp={tp} must divide n_heads={spec.n_heads} and n_kv_heads={spec.n_kv_heads}; use a common divisor"
        )
    if spec.d_ff % tp or spec.vocab_size % tp:
        raise IsoflopError(f"tp={tp} must divide d_ff={spec.d_ff} and vocab_size={spec.vocab_size}")
    if pp > spec.n_layers:
        raise IsoflopError(f"pp={pp} exceeds n_layers={spec.n_layers}; use at most one stage per layer")
    check_cp_split(seq_len, cp, tp)
    return MeshLayout(pp=pp, dp_replicate=replicate, dp_shard=derived // replicate, cp=cp, tp=tp)


def build_mesh(layout: MeshLayout, device_type: str):
    """``init_device_mesh`` over all five dimensions (size-1 dimensions included, so any can be sliced)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, layout.shape, mesh_dim_names=DIMS)
