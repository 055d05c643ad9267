"""Selection kernels: facility location (torch greedy, batched, chunked, apricot) and NN-OMP.

Facility location (FL) over a ground set ``V`` with non-negative similarity::

    F(S) = sum_{i in V} max_{j in S} sim(i, j)

is maximised greedily. The weight of a chosen ``j`` is the size of its cluster: the number of
ground elements whose most similar chosen element is ``j`` (a chosen element always counts
itself; other ties go to the earliest-chosen element), so the weights of one ground set sum to
``|V|``.

Conventions shared by every function here:

* ``sim[i, j]`` is the similarity between ground element ``i`` and candidate ``j``. The greedy
  works on the candidate-major matrix ``sim.T`` (row ``c`` = what candidate ``c`` offers to every
  ground element); for the usual symmetric similarity the two are the same tensor and nothing is
  copied.
* Ties are broken toward the lowest candidate index, in every optimizer, so naive and lazy
  greedy return identical rankings and gains.
* Marginal gains are accumulated in float64 whatever the similarity's dtype, and a candidate's
  gain is always summed in the same order whichever candidates are evaluated with it, so results
  do not depend on chunking and naive and lazy greedy agree bit for bit.
* Tensors stay on the device they came in on; randomness (stochastic greedy) comes only from
  the ``torch.Generator`` passed in.
* apricot and numba are imported only inside :func:`facility_location_apricot`.

Non-negative orthogonal matching pursuit (:func:`nn_omp`) solves GradMatch's problem: a few
atoms (per-example gradients) with non-negative weights whose weighted sum matches a target.

Every public name is importable from here. Inside: ``similarities`` (distances and
similarities), ``oracles`` (the gain-oracle protocol and facility location's oracles),
``greedy`` (naive, lazy and stochastic greedy, each written once over a gain oracle; Glister
uses them too), ``solvers`` (the public FL entry points and their dispatch),
``apricot_backend`` and ``omp``.
"""

from __future__ import annotations

from subsetlab.submodular._base import DEFAULT_MAX_BYTES, Backend, FLBatchResult, FLResult, Optimizer, SimilarityKind
from subsetlab.submodular.apricot_backend import facility_location_apricot
from subsetlab.submodular.solvers import (
    facility_location,
    facility_location_batched,
    facility_location_embeddings,
    pack_groups,
    select_facility_location,
)
from subsetlab.submodular.omp import nn_omp
from subsetlab.submodular.similarities import pairwise_distances, similarity, similarity_batched

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FLResult",
    "FLBatchResult",
    "pairwise_distances",
    "similarity",
    "similarity_batched",
    "facility_location",
    "facility_location_embeddings",
    "facility_location_batched",
    "facility_location_apricot",
    "select_facility_location",
    "pack_groups",
    "nn_omp",
]
