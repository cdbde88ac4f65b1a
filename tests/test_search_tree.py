"""Unit tests of the DTS tree on hand-built trees: soft value backup, widening, selection rules."""
import math

import pytest
import torch

from steer.search import tree as T


def _leaf(parent, value, step=2):
    n = parent.add_child(T.Node(step=step, visits=1))
    n.value = value
    return n


def _hand_tree():
    """root -> a -> {1.0, 3.0}; root -> b -> {2.0}  (steps: root -1, a/b 0, leaves 2)."""
    root = T.Node(step=T.ROOT_STEP, visits=3)
    a = root.add_child(T.Node(step=0, visits=2))
    b = root.add_child(T.Node(step=0, visits=1))
    leaves = [_leaf(a, 1.0), _leaf(a, 3.0), _leaf(b, 2.0)]
    for leaf in leaves:
        T.backup(leaf, lam=1.0)
    return root, a, b, leaves


def test_soft_value_limits():
    vals = [1.0, 3.0, -2.0]
    assert T.soft_value(vals, 1.0) == pytest.approx(math.log(sum(math.exp(v) for v in vals) / 3))
    assert T.soft_value(vals, math.inf) == 3.0
    assert T.soft_value(vals, 1e4) == pytest.approx(3.0 - math.log(3) / 1e4, abs=1e-6)  # -> max
    assert T.soft_value(vals, 1e-6) == pytest.approx(sum(vals) / 3, abs=1e-4)  # -> mean
    assert T.soft_value([1000.0, 1000.0], 5.0) == pytest.approx(1000.0)  # no overflow


def test_backup_on_hand_built_tree():
    root, a, b, _ = _hand_tree()
    va = math.log((math.exp(1) + math.exp(3)) / 2)
    assert a.value == pytest.approx(va)
    assert b.value == pytest.approx(2.0)
    assert root.value == pytest.approx(math.log((math.exp(va) + math.exp(2.0)) / 2))
    # max backup (λ = ∞) propagates the best leaf
    for leaf in T.leaves(root, 2):
        T.backup(leaf, math.inf)
    assert a.value == 3.0 and root.value == 3.0


def test_pending_children_are_ignored_by_backup():
    root, a, _, _ = _hand_tree()
    a.add_child(T.Node(step=2, visits=1))  # rollout in flight, no value yet
    T.backup(a.children[0], 1.0)
    assert a.value == pytest.approx(math.log((math.exp(1) + math.exp(3)) / 2))


@pytest.mark.parametrize("visits,children,allowed", [
    (0, 0, True), (1, 1, True), (1, 2, False), (10, 12, True), (10, 13, False), (100, 79, True), (100, 80, False),
])
def test_progressive_widening_threshold(visits, children, allowed):
    node = T.Node(step=0, visits=visits)
    for _ in range(children):
        node.add_child(T.Node(step=1))
    # C·N^α with C = 2, α = 0.8: N=1 -> 2, N=10 -> 12.6, N=100 -> 79.6
    assert T.can_widen(node, 2.0, 0.8) is allowed


def test_descend_stops_where_widening_is_allowed():
    root, a, b, leaves = _hand_tree()
    root.visits = 1  # 2 children < 2·2^0.8 after this visit -> the new child goes under the root
    assert T.descend(root, 2, lambda n: T.uct_child(n, 0.0), 2.0, 0.8) is root
    assert root.visits == 2
    # C = 1, α ≈ 0: nobody may widen; greedy descent ends on the best leaf, counting visits on the way
    node = T.descend(root, 2, lambda n: T.uct_child(n, 0.0), 1.0, 0.01)
    assert node is leaves[1] and node.visits == 2 and a.visits == 3 and root.visits == 3
    # C = 2, α = 0 (at most 2 children): the root is full, so descend into b, whose single child
    # leaves room for a second
    node = T.descend(root, 2, lambda n: b, 2.0, 0.0)
    assert node is b
def test_uct_prefers_value_then_exploration():
    root, a, b, _ = _hand_tree()
    assert T.uct_child(root, 0.0) is a  # higher v̂
    root.visits, a.visits, b.visits = 1000, 999, 1
    assert T.uct_child(root, 1.0) is b  # rarely visited sibling gets the exploration bonus


def test_boltzmann_selection_frequencies():
    root = T.Node(step=T.ROOT_STEP)
    values = [0.0, 1.0, 2.0]
    kids = [_leaf(root, v, step=0) for v in values]
    g = torch.Generator().manual_seed(0)
    n = 6000
    counts = [0, 0, 0]
    for _ in range(n):
        counts[kids.index(T.boltzmann_child(root, 1.0, g))] += 1
    probs = torch.softmax(torch.tensor(values), 0)
    for c, p in zip(counts, probs.tolist()):
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_sample_leaf_follows_the_soft_policy():
    root, a, b, leaves = _hand_tree()
    g = torch.Generator().manual_seed(1)
    n = 6000
    hits = sum(T.sample_leaf(root, 2, 1.0, g) is leaves[1] for _ in range(n))
    # P(leaf 3.0) = P(a)·P(3.0 | a) with P(a) ∝ exp(v̂(a)) = mean(e^1, e^3), P(b) ∝ e^2
    pa = (math.exp(1) + math.exp(3)) / 2 / ((math.exp(1) + math.exp(3)) / 2 + math.exp(2))
    p = pa * math.exp(3) / (math.exp(1) + math.exp(3))
    assert abs(hits / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_batched_leaf_sampling_matches_the_policy():
    root, a, b, leaves = _hand_tree()
    n = 6000
    drawn = T.sample_leaves(root, 2, 1.0, n, torch.Generator().manual_seed(2))
    assert len(drawn) == n
    pa = (math.exp(1) + math.exp(3)) / 2 / ((math.exp(1) + math.exp(3)) / 2 + math.exp(2))
    for leaf, p in zip(leaves, [pa * math.exp(1) / (math.exp(1) + math.exp(3)),
                                pa * math.exp(3) / (math.exp(1) + math.exp(3)), 1 - pa]):
        hits = sum(d is leaf for d in drawn)
        assert abs(hits / n - p) < 4 * math.sqrt(p * (1 - p) / n)
