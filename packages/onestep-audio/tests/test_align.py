"""Monotonic alignment search against a brute-force enumeration of every monotonic alignment,
its invariants on padded batches, the durations it implies, and its errors."""

import itertools
import time

import numpy as np
import pytest
import torch

from onestep.audio.align import (
    AlignmentError,
    alignment_from_durations,
    durations_from_alignment,
    monotonic_alignment_search,
)


def _brute_force(scores):
    """(best total, best alignment (N, T)) over all C(T-1, N-1) monotonic alignments."""
    n, t = scores.shape
    best, best_path = -np.inf, None
    for cuts in itertools.combinations(range(1, t), n - 1):  # frames where a new token starts
        bounds = (0, *cuts, t)
        path = np.zeros((n, t))
        for i in range(n):
            path[i, bounds[i]:bounds[i + 1]] = 1
        total = (scores * path).sum()
        if total > best:
            best, best_path = total, path
    return best, best_path


@pytest.mark.parametrize(("n", "t"), [(3, 6), (4, 7), (1, 5), (5, 5), (2, 8), (4, 9)])
def test_equals_brute_force_enumeration(n, t):
    rng = np.random.default_rng(n * 100 + t)
    for _ in range(20):
        scores = rng.normal(size=(n, t))
        best, expected = _brute_force(scores)
        path = monotonic_alignment_search(scores)
        assert (scores * path).sum() == pytest.approx(best, abs=1e-12)
        np.testing.assert_array_equal(path, expected)  # continuous scores: a unique optimum


def _check_alignment(path, n, t):
    """Every real frame on exactly one token, padding empty, monotonic steps of 0 or 1 from the
    first token to the last."""
    assert np.all(path[n:, :] == 0) and np.all(path[:, t:] == 0)
    real = path[:n, :t]
    assert set(np.unique(real)) <= {0.0, 1.0}
    np.testing.assert_array_equal(real.sum(0), np.ones(t))
    token = real.argmax(0)
    assert token[0] == 0 and token[-1] == n - 1
    assert set(np.diff(token)) <= {0, 1}


def test_padded_batch_invariants_and_masks():
    rng = np.random.default_rng(1)
    text_lengths, frame_lengths = np.array([7, 3, 12, 1]), np.array([40, 3, 25, 9])
    scores = rng.normal(size=(4, 12, 40))
    paths = monotonic_alignment_search(scores, text_lengths, frame_lengths)
    assert paths.shape == (4, 12, 40) and paths.dtype == np.float32
    durations = durations_from_alignment(paths)
    for b, (n, t) in enumerate(zip(text_lengths, frame_lengths, strict=True)):
        _check_alignment(paths[b], n, t)
        assert durations[b].sum() == t and np.all(durations[b, :n] >= 1)
        assert np.all(durations[b, n:] == 0)
        # the padding plays no part: the item alone, and the item with NaN in its padding
        alone = monotonic_alignment_search(scores[b, :n, :t])
        np.testing.assert_array_equal(paths[b, :n, :t], alone)
        noisy = scores[b].copy()
        noisy[n:, :], noisy[:, t:] = np.nan, np.inf
        np.testing.assert_array_equal(monotonic_alignment_search(noisy, n, t), paths[b])
    # prefix masks give the same as lengths
    text_mask = np.arange(12)[None] < text_lengths[:, None]
    frame_mask = np.arange(40)[None] < frame_lengths[:, None]
    np.testing.assert_array_equal(monotonic_alignment_search(scores, text_mask, frame_mask),
                                  paths)


def test_recovers_a_planted_alignment():
    """Frames drawn near their token's mean: the search returns the durations that made them."""
    rng = np.random.default_rng(2)
    durations = rng.integers(1, 9, size=30)
    means = rng.normal(size=(30, 8)) * 3
    frames = np.repeat(means, durations, axis=0) + 0.3 * rng.normal(size=(durations.sum(), 8))
    scores = -0.5 * ((means[:, None, :] - frames[None, :, :]) ** 2).sum(-1)  # (N, T)
    path = monotonic_alignment_search(scores)
    np.testing.assert_array_equal(durations_from_alignment(path), durations)
    np.testing.assert_array_equal(path, alignment_from_durations(durations))


def test_torch_in_torch_out():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    lengths, frames = torch.tensor([5, 2, 4]), torch.tensor([11, 6, 4])
    path = monotonic_alignment_search(scores, lengths, frames)
    assert isinstance(path, torch.Tensor) and path.dtype == torch.float64
    np.testing.assert_array_equal(
        path.numpy(), monotonic_alignment_search(scores.numpy(), lengths.numpy(), frames.numpy()))
    durations = durations_from_alignment(path)
    assert durations.dtype == torch.long and durations.sum(1).tolist() == [11, 6, 4]
    assert torch.equal(alignment_from_durations(durations, 11), path)


def test_durations_round_trip():
    durations = np.array([[2, 1, 3, 0], [1, 1, 1, 1]])
    path = alignment_from_durations(durations, 8)
    assert path.shape == (2, 4, 8) and path[0, :, 6:].sum() == 0 and path[1, :, 4:].sum() == 0
    np.testing.assert_array_equal(durations_from_alignment(path), durations)
    with pytest.raises(AlignmentError, match="add up to 6 frames, more than n_frames"):
        alignment_from_durations(durations, 5)
    with pytest.raises(AlignmentError, match="whole numbers of frames"):
        alignment_from_durations([1.5, 2])


def test_more_tokens_than_frames_is_a_clear_error():
    with pytest.raises(AlignmentError, match=r"more tokens \(5\) than frames \(4\)"):
        monotonic_alignment_search(np.zeros((5, 4)))
    with pytest.raises(AlignmentError, match=r"batch item 1 has more tokens \(3\) than frames "
                       r"\(2\)"):
        monotonic_alignment_search(np.zeros((2, 3, 6)), [3, 3], [6, 2])


@pytest.mark.parametrize(("args", "message"), [
    ((np.zeros((2, 3, 4, 5)),), "must be .batch, tokens, frames."),
    ((np.zeros((0, 4)),), "non-empty"),
    ((np.zeros((2, 3, 5)), [3, 4]), "lengths must be between 1 and 3"),
    ((np.zeros((2, 3, 5)), [0, 2]), "lengths must be between 1 and 3"),
    ((np.zeros((2, 3, 5)), [3, 3, 3]), r"must be lengths \(2,\) or a mask \(2, 3\)"),
    ((np.zeros((1, 3, 5)), None, [[True, False, True, True, False]]), "not a prefix mask"),
    ((np.full((3, 5), np.nan),), "NaN or infinite values inside the lengths"),
])
def test_bad_input_is_a_one_line_error(args, message):
    with pytest.raises(AlignmentError, match=message) as e:
        monotonic_alignment_search(*args)
    assert "\n" not in str(e.value)


def test_fast_enough_for_500_frames_and_100_tokens():
    scores = np.random.default_rng(4).normal(size=(100, 500))
    monotonic_alignment_search(scores)
    start = time.perf_counter()
    path = monotonic_alignment_search(scores)
    elapsed = time.perf_counter() - start
    _check_alignment(path, 100, 500)
    assert elapsed < 1.0, f"{elapsed:.3f} s for one 100 x 500 search (about 0.013 s measured)"
