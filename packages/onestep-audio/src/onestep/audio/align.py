"""Monotonic alignment search (Glow-TTS, Kim et al. 2020, Sec. 3.2 and Algorithm 1): the
monotonic, surjective alignment of text tokens to mel frames that maximises the summed
log-likelihood, by dynamic programming over frames and backtracking, and the token durations it
implies.

An alignment maps every frame j to one token A(j) with A(0) = 0, A(T - 1) = N - 1 and
A(j + 1) - A(j) in {0, 1}: tokens are read in order, none is skipped and each gets at least one
frame, so it needs N <= T. The forward pass is Algorithm 1's recursion

    Q[i, j] = max(Q[i - 1, j - 1], Q[i, j - 1]) + L[i, j],    Q[0, 0] = L[0, 0],

computed one frame at a time, each step vectorised over the batch and the tokens (numpy, float64);
the backtracking walks from (N - 1, T - 1) to (0, 0), all batch items at once. On a tie it stays
on the same token, as Glow-TTS's implementation does.

Padded batches: each item's text and frame lengths come as lengths (B,) or as prefix masks
(B, N) / (B, T) (True on real positions); the alignment is zero outside them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AlignmentError", "alignment_from_durations", "durations_from_alignment",
           "monotonic_alignment_search"]


class AlignmentError(ValueError):
    """An alignment cannot be searched or read as asked (shapes, lengths, values)."""


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _numpy(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _lengths(spec, batch: int, size: int, name: str) -> np.ndarray:
    """Lengths (B,) from None (all `size`), lengths (B,) or a prefix mask (B, size)."""
    if spec is None:
        return np.full(batch, size, dtype=np.int64)
    a = _numpy(spec)
    if a.ndim == 2:  # a mask: it must be True on a prefix of each row
        if a.shape != (batch, size):
            raise AlignmentError(f"{name} mask has shape {a.shape}, expected ({batch}, {size})")
        m = a.astype(bool)
        lengths = m.sum(1)
        if not np.array_equal(m, np.arange(size)[None, :] < lengths[:, None]):
            raise AlignmentError(f"{name} mask is not a prefix mask (True then False on each "
                                 "row): padding must come last")
        return lengths.astype(np.int64)
    if a.ndim != 1 or a.shape[0] != batch:
        raise AlignmentError(f"{name} must be lengths ({batch},) or a mask ({batch}, {size}), "
                             f"got shape {a.shape}")
    if not np.all(np.equal(np.round(a), a)):
        raise AlignmentError(f"{name} lengths must be whole numbers, got {a.tolist()}")
    lengths = a.astype(np.int64)
    if lengths.min() < 1 or lengths.max() > size:
        raise AlignmentError(f"{name} lengths must be between 1 and {size}, got "
                             f"{lengths.tolist()}")
    return lengths


def _one_item(spec):
    """An unbatched item's length (a number) or mask (one row) as a batch of one."""
    if spec is None:
        return None
    a = _numpy(spec)
    return a.reshape(1, -1) if a.ndim == 1 else a.reshape(1)


def monotonic_alignment_search(log_likelihood, text_lengths=None, frame_lengths=None):
    """Glow-TTS's monotonic alignment search (Algorithm 1) on `log_likelihood` (B, N, T) or
    (N, T): token i of N against frame j of T. `text_lengths` / `frame_lengths`: lengths (B,) or
    prefix masks (B, N) / (B, T) of the real tokens and frames (default: all). Returns the
    alignment (B, N, T) (or (N, T)), 1 where frame j is assigned to token i and 0 elsewhere,
    as float32 numpy, or as a float tensor on the input's device for a tensor input."""
    scores = _numpy(log_likelihood, np.float64)
    unbatched = scores.ndim == 2
    if unbatched:
        scores = scores[None]
    if scores.ndim != 3 or 0 in scores.shape:
        raise AlignmentError(f"log_likelihood must be (batch, tokens, frames) or (tokens, "
                             f"frames) and non-empty, got shape {scores.shape}")
    batch, n_tok, n_frm = scores.shape
    if unbatched:
        text_lengths, frame_lengths = _one_item(text_lengths), _one_item(frame_lengths)
    n = _lengths(text_lengths, batch, n_tok, "text_lengths")
    t = _lengths(frame_lengths, batch, n_frm, "frame_lengths")
    if np.any(n > t):
        b = int(np.argmax(n > t))
        raise AlignmentError(f"batch item {b} has more tokens ({n[b]}) than frames ({t[b]}): a "
                             "monotonic alignment gives every token at least one frame")
    valid = (np.arange(n_tok)[None, :, None] < n[:, None, None]) & \
        (np.arange(n_frm)[None, None, :] < t[:, None, None])
    if not np.isfinite(scores[valid]).all():
        raise AlignmentError("log_likelihood holds NaN or infinite values inside the lengths")
    scores = np.where(valid, scores, 0.0)  # padding plays no part

    # forward pass (Algorithm 1): Q[:, i, j], frame by frame; token i > j cannot be reached
    neg = -np.inf
    q = np.full((batch, n_tok, n_frm), neg)
    q[:, 0, 0] = scores[:, 0, 0]
    for j in range(1, n_frm):
        stay = q[:, :, j - 1]                                           # from (i, j - 1)
        step = np.concatenate([np.full((batch, 1), neg), q[:, :-1, j - 1]], axis=1)  # (i-1, j-1)
        q[:, :, j] = np.maximum(stay, step) + scores[:, :, j]

    # backtracking: from (N - 1, T - 1) of each item back to (0, 0)
    path = np.zeros((batch, n_tok, n_frm), dtype=np.float32)
    rows = np.arange(batch)
    index = n - 1
    for j in range(n_frm - 1, -1, -1):
        active = j < t                                                  # frames inside lengths
        path[rows[active], index[active], j] = 1.0
        if j == 0:
            break
        prev_stay = q[rows, index, j - 1]
        prev_step = q[rows, np.maximum(index - 1, 0), j - 1]
        move = active & (index > 0) & ((index == j) | (prev_stay < prev_step))
        index = index - move
    if unbatched:
        path = path[0]
    if _is_torch(log_likelihood):
        import torch

        dtype = log_likelihood.dtype if log_likelihood.is_floating_point() else torch.float32
        return torch.from_numpy(path).to(device=log_likelihood.device, dtype=dtype)
    return path


def durations_from_alignment(alignment):
    """Frames per token (B, N) (or (N,)) of an alignment (B, N, T) (or (N, T)): its sums over
    frames, as int64 numpy, or a long tensor for a tensor input."""
    if getattr(alignment, "ndim", None) not in (2, 3):
        raise AlignmentError(f"alignment must be (batch, tokens, frames) or (tokens, frames), "
                             f"got shape {tuple(getattr(alignment, 'shape', ()))}")
    if _is_torch(alignment):
        return alignment.sum(-1).round().long()
    return np.rint(np.asarray(alignment).sum(-1)).astype(np.int64)


def alignment_from_durations(durations, n_frames: int | None = None):
    """The monotonic alignment (B, N, T) (or (N, T)) that gives token i durations[..., i]
    frames in order (a length regulator's expansion); T = n_frames (default: the largest
    total), frames past an item's total are left unassigned. float32 numpy, or a float tensor
    for a tensor input."""
    d = _numpy(durations)
    unbatched = d.ndim == 1
    d = d[None] if unbatched else d
    if d.ndim != 2 or d.shape[1] == 0:
        raise AlignmentError(f"durations must be (batch, tokens) or (tokens,), got shape "
                             f"{d.shape}")
    if not np.all(np.equal(np.round(d), d)) or d.min() < 0:
        raise AlignmentError("durations must be whole numbers of frames, at least 0")
    d = d.astype(np.int64)
    ends = np.cumsum(d, axis=1)                                          # (B, N)
    total = int(ends[:, -1].max())
    n_frames = total if n_frames is None else int(n_frames)
    if n_frames < total:
        raise AlignmentError(f"durations add up to {total} frames, more than n_frames "
                             f"({n_frames})")
    frames = np.arange(n_frames)[None, None, :]
    path = ((frames >= (ends - d)[:, :, None]) & (frames < ends[:, :, None])).astype(np.float32)
    path = path[0] if unbatched else path
    if _is_torch(durations):
        import torch

        return torch.from_numpy(path).to(durations.device)
    return path
