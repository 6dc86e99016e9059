"""Which channels a sequence sharpens: per-sequence selectors U (d_in x r) and V (d_out x r).

Both builders score channels over the tokens of one sequence with padding masked out, so a sequence's
selection never depends on its batch-mates:

- input score of channel j:  mean over the sequence's tokens of |x_j|;
- output score of channel k: mean over the sequence's tokens of |(x W^T)_k| (the bias excluded).

``sparse`` takes the true top-r of each (``torch.topk``, in descending score order; the reference code
took arbitrary members of a top-k set). ``coupled`` keeps those channels and couples them by a ridge
regression T = (X_A^T X_A + a I)^-1 X_A^T Y of the selected output columns Y on the selected input
columns X_A, rows of T in the input order and columns in the output order (the reference code paired
the two index lists in different orders).

A selection is stored as index lists plus a mixing matrix M (r x r): U = E_I M and V = E_O, with E_I,
E_O the one-hot columns of the chosen input and output channels. For ``sparse`` M is the identity, so
rank-1 component c is W[:, i_c] W[o_c, :]; for ``coupled`` M = T, so component c pairs output row
W[o_c, :] with the combination sum_j T[j, c] W[:, i_j] of the input columns that predict output o_c.
This is the most direct reading of "T between the selected input and output columns": T maps the
selected inputs to the selected outputs, and V stays the plain output selector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BUILDERS: tuple[str, ...] = ("sparse", "coupled")


@dataclass(frozen=True)
class Selection:
    """Per-sequence selectors in index form; ``mix`` is M in U = E_I M (before the rank-1 clip)."""

    in_idx: Tensor  # (B, r) input channels, highest score first
    out_idx: Tensor  # (B, r) output channels, highest score first
    mix: Tensor  # (B, r, r)


def masked_mean_abs(t: Tensor, mask: Tensor) -> Tensor:
    """mean_t |t[b, t, :]| over the tokens where mask[b, t] = 1 -> (B, d)."""
    m = mask.to(t.dtype).unsqueeze(-1)
    return (t.abs() * m).sum(1) / m.sum(1).clamp_min(1.0)


def top_r(scores: Tensor, rank: int) -> Tensor:
    """Indices of the r largest scores per row, largest first (the true top-r, not any r of a top-k)."""
    return torch.topk(scores, rank, dim=-1, largest=True, sorted=True).indices


def gather_channels(t: Tensor, idx: Tensor) -> Tensor:
    """t[b, :, idx[b, c]] -> (B, S, r)."""
    return torch.gather(t, 2, idx.unsqueeze(1).expand(-1, t.shape[1], -1))


def sparse_selection(x: Tensor, y_lin: Tensor, mask: Tensor, rank: int) -> Selection:
    in_idx = top_r(masked_mean_abs(x, mask), rank)
    out_idx = top_r(masked_mean_abs(y_lin, mask), rank)
    eye = torch.eye(rank, dtype=x.dtype, device=x.device).expand(x.shape[0], rank, rank)
    return Selection(in_idx, out_idx, eye)


def coupled_selection(x: Tensor, y_lin: Tensor, mask: Tensor, rank: int, ridge: float) -> Selection:
    """Ridge coupling of the sparse selection's columns; padded tokens are zero rows, so they drop out."""
    sparse = sparse_selection(x, y_lin, mask, rank)
    # float64: a small, possibly ill-conditioned solve whose result must not depend on the padded width
    m = mask.to(torch.float64).unsqueeze(-1)
    xa = gather_channels(x, sparse.in_idx).double() * m  # (B, S, r): columns in input order
    y = gather_channels(y_lin, sparse.out_idx).double() * m  # (B, S, r): columns in output order
    gram = xa.transpose(1, 2) @ xa + ridge * torch.eye(rank, dtype=torch.float64, device=x.device)
    coupling = torch.linalg.solve(gram, xa.transpose(1, 2) @ y)  # T[b, j, c]: input i_j -> output o_c
    return Selection(sparse.in_idx, sparse.out_idx, coupling.to(x.dtype))


def build_selection(builder: str, x: Tensor, y_lin: Tensor, mask: Tensor, rank: int, ridge: float = 1.0) -> Selection:
    """``x`` (B, S, d_in) the Linear's input, ``y_lin`` (B, S, d_out) = x W^T, ``mask`` (B, S) 1 = real token."""
    rank = min(rank, x.shape[-1], y_lin.shape[-1])
    if builder == "sparse":
        return sparse_selection(x, y_lin, mask, rank)
    if builder == "coupled":
        return coupled_selection(x, y_lin, mask, rank, ridge)
    raise ValueError(f"unknown VPS builder '{builder}'; valid: {', '.join(BUILDERS)}")


def dense_selectors(selection: Selection, d_in: int, d_out: int, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """U (B, d_in, r) = E_I M diag(scale) and V (B, d_out, r) = E_O as dense tensors (for checks only)."""
    b, r = selection.in_idx.shape
    dtype = selection.mix.dtype
    e_in = torch.zeros(b, d_in, r, dtype=dtype).scatter_(1, selection.in_idx.unsqueeze(1), 1.0)
    v = torch.zeros(b, d_out, r, dtype=dtype).scatter_(1, selection.out_idx.unsqueeze(1), 1.0)
    u = e_in @ selection.mix
    if scale is not None:
        u = u * scale.unsqueeze(1)
    return u, v
