"""subsetlab.quotas: one largest-remainder rounding for splits, Random, the baselines and CREST."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from subsetlab.errors import DataError
from subsetlab.quotas import allocate_quotas, stratified_quotas, stratified_sizes


def _reference(counts: list[int], k: int) -> list[int]:
    """Largest remainder in exact rationals, ties to the lower class id (the documented rule)."""
    n = sum(counts)
    share = [Fraction(c * k, n) for c in counts]
    q = [int(s) for s in share]
    order = sorted(range(len(counts)), key=lambda i: (-(share[i] - q[i]), i))
    for i in order[: k - sum(q)]:
        q[i] += 1
    return q


@pytest.mark.parametrize(
    ("counts", "k", "expected"),
    [
        # 57*20/92 and 34*20/92 leave the same remainder (36/92), not the same float remainder
        ([57, 34, 1], 20, [13, 7, 0]),
        ([4, 1, 0, 1], 2, [2, 0, 0, 0]),
        ([2, 339, 3, 5465, 92, 20, 0, 46], 1989, [1, 113, 1, 1822, 31, 6, 0, 15]),
    ],
)
def test_equal_remainders_go_to_the_lower_class_id_in_every_entry_point(counts, k, expected):
    c = torch.tensor(counts)
    assert _reference(counts, k) == expected
    assert stratified_quotas(c, k).tolist() == expected
    assert allocate_quotas(c, k).tolist() == expected
    assert stratified_sizes(c, k).tolist() == expected


def test_entry_points_agree_with_exact_largest_remainder_when_no_bound_binds():
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        C = int(torch.randint(1, 9, (1,), generator=g))
        counts = torch.randint(0, 60, (C,), generator=g)
        if int(counts.sum()) == 0:
            continue
        k = int(torch.randint(0, int(counts.sum()) + 1, (1,), generator=g))
        ref = _reference(counts.tolist(), k)
        assert stratified_quotas(counts, k).tolist() == ref
        assert stratified_sizes(counts, k).tolist() == ref
        assert allocate_quotas(counts.unsqueeze(0).expand(3, C), k).tolist() == [ref] * 3


def test_stratified_sizes_bounds_and_error():
    counts = torch.tensor([100, 1, 1])
    sizes = stratified_sizes(counts, 10, lower=1)
    assert sizes.tolist() == [8, 1, 1] and int(sizes.sum()) == 10
    assert stratified_sizes(counts, 10, upper=torch.tensor([5, 5, 5])).tolist() == [5, 3, 2]
    with pytest.raises(DataError, match="must lie in"):
        stratified_sizes(counts, 2, lower=1)


def test_allocate_quotas_redistributes_the_shortfall_of_scarce_classes():
    # class 1 holds 1 member but its share of 10 is 5: the 4 left go to the others in proportion
    q = allocate_quotas(torch.tensor([10, 1, 10]), 10, proportions=torch.tensor([1.0, 2.0, 1.0]))
    assert q.tolist() == [5, 1, 4] and int(q.sum()) == 10
    assert allocate_quotas(torch.tensor([2, 3]), 99).tolist() == [2, 3]  # asks for more than it holds
