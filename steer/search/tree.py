"""The search tree of Diffusion Tree Sampling / Search (Jain et al. 2025): nodes, soft value backup,
progressive widening and the two selection rules. Pure bookkeeping — no denoiser calls here.

Notation (code name -> paper):

=================  ==============================================================
``node.x``         x_t, the latent at chain step ``node.step`` (0 = x_T, S = x_0)
``node.value``     v̂(x_t), the soft value estimate; r(x_0) at a terminal node
``node.visits``    N(x_t), how many traversals passed through the node
``lam``            λ, inverse temperature of the target p_θ(x_0)·exp(λ·r(x_0))
``widen_c``        C, ``widen_alpha`` α: a node may get a new child while |C(x_t)| < C·N(x_t)^α
``exploration``    c, the UCT constant of DTS*
=================  ==============================================================

The root is a dummy node above x_T whose children are draws of the initial noise. Values are
Python floats (the tree is small next to the denoiser); latents stay tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

ROOT_STEP = -1


@dataclass(eq=False)
class Node:
    """One state x_t of the chain in the tree."""

    step: int
    x: Optional[Tensor] = None  # (*latent_shape); None for the root
    parent: Optional["Node"] = None
    children: list["Node"] = field(default_factory=list)
    visits: int = 0
    value: Optional[float] = None  # v̂; None while the node's first rollout is pending

    def add_child(self, child: "Node") -> "Node":
        child.parent = self
        self.children.append(child)
        return child

    def valued_children(self) -> list["Node"]:
        return [c for c in self.children if c.value is not None]


def soft_value(values: Sequence[float], lam: float) -> float:
    """(1/λ)·log mean_i exp(λ·v_i), computed stably; λ = ∞ gives max_i v_i."""
    if not values:
        raise ValueError("soft_value of a node without valued children")
    m = max(values)
    if math.isinf(lam):
        return m
    mean = sum(math.exp(lam * (v - m)) for v in values) / len(values)
    return m + math.log(mean) / lam


def can_widen(node: Node, widen_c: float, widen_alpha: float) -> bool:
    """Progressive widening: a new child is allowed while |children| < C·max(N, 1)^α."""
    return len(node.children) < widen_c * max(node.visits, 1) ** widen_alpha


def _uniform(generator: Optional[torch.Generator]) -> float:
    device = generator.device if generator is not None else "cpu"
    return float(torch.rand((), generator=generator, device=device))


def boltzmann_child(node: Node, lam: float, generator: Optional[torch.Generator] = None) -> Node:
    """DTS selection: a valued child drawn with probability ∝ exp(λ·v̂(child))."""
    kids = node.valued_children()
    if math.isinf(lam):
        return max(kids, key=lambda c: c.value)
    m = max(c.value for c in kids)
    weights = [math.exp(lam * (c.value - m)) for c in kids]
    u = _uniform(generator) * sum(weights)
    acc = 0.0
    for child, w in zip(kids, weights):
        acc += w
        if u < acc:
            return child
    return kids[-1]  # float round-off: u landed on the total


def uct_child(node: Node, exploration: float) -> Node:
    """DTS* selection: argmax v̂(child) + c·sqrt(log N(parent) / N(child))."""
    log_n = math.log(max(node.visits, 1))

    def score(c: Node) -> float:
        return c.value + exploration * math.sqrt(log_n / max(c.visits, 1))

    return max(node.valued_children(), key=score)


def boltzmann_rule(lam: float, generator) -> Callable[[Node], Node]:
    """DTS's selection: a child drawn ∝ exp(λ·v̂)."""
    return lambda node: boltzmann_child(node, lam, generator)


def uct_rule(exploration: float) -> Callable[[Node], Node]:
    """DTS*'s selection: the child maximizing v̂ + c·sqrt(log N_parent / N_child)."""
    return lambda node: uct_child(node, exploration)


def descend(root: Node, last_step: int, choose: Callable[[Node], Node], widen_c: float, widen_alpha: float) -> Node:
    """One traversal from the root, counting a visit at every node passed. Stops at the first node
    that may widen (returned: the parent of the next new child) or at a terminal node (returned)."""
    node = root
    while True:
        node.visits += 1
        if node.step == last_step:
            return node
        if not node.valued_children() or can_widen(node, widen_c, widen_alpha):
            return node
        node = choose(node)


def backup(leaf: Node, lam: float) -> None:
    """Soft Bellman backup from a terminal leaf to the root: v̂ ← (1/λ)·log mean_children exp(λ·v̂)."""
    node = leaf.parent
    while node is not None:
        node.value = soft_value([c.value for c in node.valued_children()], lam)
        node = node.parent


def sample_leaf(root: Node, last_step: int, lam: float, generator: Optional[torch.Generator] = None) -> Node:
    """A terminal node drawn from the tree's sampling policy (Boltzmann over v̂ at every level)."""
    node = root
    while node.step != last_step:
        node = boltzmann_child(node, lam, generator)
    return node


def sample_leaves(root: Node, last_step: int, lam: float, n: int,
                  generator: Optional[torch.Generator] = None) -> list[Node]:
    """``n`` independent draws of ``sample_leaf``, made level by level (one multinomial per visited
    node instead of one per draw and node), returned in random order."""
    device = generator.device if generator is not None else "cpu"
    out: list[Node] = []
    stack = [(root, n)]
    while stack:
        node, count = stack.pop()
        if node.step == last_step:
            out.extend([node] * count)
            continue
        kids = node.valued_children()
        logits = torch.tensor([c.value for c in kids], dtype=torch.float64) * lam  # (C,)
        probs = torch.softmax(logits, 0).to(device)
        draws = torch.multinomial(probs, count, replacement=True, generator=generator)
        counts = torch.bincount(draws.cpu(), minlength=len(kids)).tolist()
        stack.extend((c, k) for c, k in zip(kids, counts) if k > 0)
    order = torch.randperm(len(out), generator=generator, device=device).tolist()
    return [out[i] for i in order]


def leaves(root: Node, last_step: int) -> list[Node]:
    """Every terminal node under ``root``."""
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        if n.step == last_step:
            out.append(n)
        stack.extend(n.children)
    return out


@dataclass
class SearchTree:
    """The state of a DTS / DTS* search: one tree per prompt, resumable with more budget.

    ``levels`` are the chain steps that hold nodes (0 = x_T, the branching steps, S = x_0);
    ``lam`` is the λ the values were backed up with (a continuation must use the same).
    ``nfe`` / ``rollouts`` are per prompt, summed over every call that grew the tree.
    """

    prompts: tuple[str, ...]
    levels: tuple[int, ...]
    lam: float
    noise_level: float
    roots: list[Node]
    best: list[Optional[Node]]
    nfe: list[int]
    rollouts: list[int]

    @classmethod
    def new(cls, prompts: Sequence[str], levels: Sequence[int], lam: float, noise_level: float) -> "SearchTree":
        p = len(prompts)
        return cls(prompts=tuple(prompts), levels=tuple(levels), lam=lam, noise_level=noise_level,
                   roots=[Node(step=ROOT_STEP) for _ in range(p)], best=[None] * p, nfe=[0] * p, rollouts=[0] * p)

    @property
    def last_step(self) -> int:
        return self.levels[-1]

    def record_leaf(self, k: int, leaf: Node) -> None:
        """Count a finished rollout of tree ``k`` and keep its best leaf."""
        self.rollouts[k] += 1
        if self.best[k] is None or leaf.value > self.best[k].value:
            self.best[k] = leaf
