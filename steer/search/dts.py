"""Diffusion Tree Sampling (DTS) and Diffusion Tree Search (DTS*) — Jain et al. 2025,
"Diffusion Tree Sampling: Scalable inference-time alignment of diffusion models" (arXiv:2506.20701).

The denoising chain is a tree: nodes are states at the branching steps, edges stochastic kernel
stretches. Each round, for every prompt's tree: **select** from the root (DTS: a child ∝ exp(λ·v̂);
DTS*: argmax v̂ + c·sqrt(log N_parent / N_child)) until a node may **widen** (|children| < C·N^α);
**expand** it with one new child and **roll out** to x_0 with the stochastic kernel, every state on
the rollout joining the tree; score r(x_0) and **back up** v̂ ← (1/λ)·log mean_children exp(λ·v̂).
DTS then returns samples from the tree's Boltzmann policy (asymptotically p_θ(x_0)·exp(λ·r(x_0)));
DTS* returns the best leaf found. Both are anytime and resumable: pass ``tree=result.tree`` with
more budget to continue.

Defaults (``preset="steer"``): C = 1, α = 0.5, nodes every ``max(1, S // 5)`` steps; λ = 1; c = 1
for DTS*; stochastic kernel DDIM η = 1 for diffusion and the Flow-GRPO SDE a = 0.7 for flow.
The paper's values (``preset="paper"``): C = 2, α = 0.8 and every x_t a node (its Algorithm 1).
Why ours differ: with C = 2, α = 0.8 a node may widen while |children| < 2·N^0.8, so the root
takes a new child on each of its first ~36 visits: below ~37 rollouts per prompt — the 4–32 that
users run — every rollout starts from a fresh x_T, DTS* is best-of-N with the stochastic kernel
and DTS resamples i.i.d. samples. Square-root widening (C = 1, α = 0.5) gives the root ~√N
children and re-enters existing nodes from the third rollout on (8 rollouts: 3 distinct x_T);
five branching depths keep the visits per node high enough for the deeper nodes to branch too.
Measured on the exact 2-D harness (S = 20, 12 prompts, tests/test_search_gmm.py): DTS* came
within 0.01 of the reward's maximum in a median 736 / 684 NFE (diffusion / flow) with these
defaults, 1120 / not within 100 rollouts with the paper's, best-of-N 4940; DTS's TV distance to
the tilted target fell 0.56 -> 0.30 / 0.72 -> 0.21 from 100 to 1600 rollouts (paper's: 0.90 ->
0.39 / 0.71 -> 0.31). Explicit ``widen_c`` / ``widen_alpha`` / ``branch_every`` override the
preset. Other deviations: ``branch_every`` / ``branch_steps`` coarsen the tree (nodes only at
those steps, as the paper does for large images); with ``rollouts_per_round`` > 1 several leaves
are selected before any backup (visits are counted at selection, so widening sees them) and rolled
out in one batch — the paper's loop is sequential (``rollouts_per_round=1``, the default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from steer import toolkit
from steer.budget import Budget, Trace
from steer.scoring import score_latents
from steer.search import tree as T
from steer.search.rollout import rollout
from steer.types import Result, StepInfo

DEFAULT_ROLLOUTS = 32
# progressive widening (C, α) and node spacing (None: max(1, S // 5) steps) by preset
PRESETS = {"steer": {"widen_c": 1.0, "widen_alpha": 0.5, "branch_every": None},
           "paper": {"widen_c": 2.0, "widen_alpha": 0.8, "branch_every": 1}}
_MAX_REVISITS = 10_000  # traversals ending on an existing leaf before a round gives up on a tree


@dataclass
class SearchResult(Result):
    """A ``Result`` that also carries the search state, to continue with ``tree=result.tree``."""

    tree: Optional[T.SearchTree] = None


# ---- options ----------------------------------------------------------------------------------

def branching_levels(num_steps: int, branch_every, branch_steps, method: str) -> tuple[int, ...]:
    """Chain steps holding tree nodes: 0 (x_T, the root's children), the branching steps, S (x_0)."""
    if branch_steps is not None:
        if not isinstance(branch_steps, (list, tuple, range)):
            raise ValueError(f"{method}: branch_steps must be a list of step indices in 0..{num_steps - 1} "
                             f"(CLI: -o branch_steps=1,2), got {branch_steps!r}")
        steps = list(branch_steps)
        if not steps:
            raise ValueError(f"{method}: branch_steps is empty; give the denoising steps where the tree may branch "
                             f"(integers in 1..{num_steps - 1}) or leave it None and set branch_every")
        for s in steps:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < num_steps:
                raise ValueError(f"{method}: branch_steps must hold integers in 0..{num_steps - 1}, got {s!r}")
    else:
        toolkit.integer(method, "branch_every", branch_every)
        steps = list(range(branch_every, num_steps, branch_every))
        if not steps and num_steps > 1:
            raise ValueError(f"{method}: branch_every={branch_every} leaves an empty branching schedule for "
                             f"{num_steps} steps; use branch_every < {num_steps}")
    return tuple(sorted({0, *steps, num_steps}))


def _tree_shape(method: str, preset: str, num_steps: int, **given) -> dict:
    """The preset's widening and node spacing, with the explicitly given options on top."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"{method}: unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    shape = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
    if shape["branch_every"] is None:
        shape["branch_every"] = max(1, num_steps // 5)
    return shape


def _default_rollouts(rollouts, budget: Optional[Budget], method: str) -> Optional[int]:
    if rollouts is not None:
        return toolkit.integer(method, "rollouts", rollouts)
    if budget is not None and (budget.nfe is not None or budget.reward_calls is not None):
        return None  # run until the budget is spent
    return DEFAULT_ROLLOUTS


def _state_for(tree, prompts, levels, lam, noise_level, method) -> T.SearchTree:
    if tree is None:
        return T.SearchTree.new(prompts, levels, lam, noise_level)
    if not isinstance(tree, T.SearchTree):
        raise TypeError(f"{method}: tree must be the .tree of a previous dts/dts_star result, got {type(tree).__name__}")
    for name, have, want in (("prompts", tree.prompts, tuple(prompts)), ("branching levels", tree.levels, levels),
                             ("lam", tree.lam, lam), ("noise_level", tree.noise_level, noise_level)):
        if have != want:
            raise ValueError(f"{method}: cannot continue the tree: its {name} {have!r} differ from this call's "
                             f"{want!r}; call with the same prompts and options as the run that built it")
    return tree


# ---- one round ----------------------------------------------------------------------------------

def _unvisit(node: T.Node) -> None:
    while node is not None:
        node.visits -= 1
        node = node.parent


class _Spend:
    """This call's rollouts per prompt: booked against the budget at selection (one reward call each),
    counted against the ``rollouts`` target, stopped for a prompt once its budget runs out."""

    def __init__(self, num_prompts: int, budget: Optional[Budget], rollouts: Optional[int]):
        self.allowance, self.rollouts = toolkit.Allowance(num_prompts, budget), rollouts
        self.stopped = [False] * num_prompts

    def wants_more(self, k: int) -> bool:
        booked = self.allowance.reward_calls[k]
        return not self.stopped[k] and (self.rollouts is None or booked < self.rollouts)


def _select(state: T.SearchTree, k: int, choose, spend: _Spend, per_round: int, widen) -> list[T.Node]:
    """Up to ``per_round`` parents to expand in tree ``k`` (each traversal counts its visits)."""
    parents: list[T.Node] = []
    revisits = 0
    while len(parents) < per_round and spend.wants_more(k):
        node = T.descend(state.roots[k], state.last_step, choose, *widen)
        if node.step == state.last_step:  # an existing leaf: the visit counts, no rollout
            revisits += 1
            if revisits > _MAX_REVISITS:
                break
            continue
        cost = state.last_step - max(node.step, 0)
        if not spend.allowance.affords(k, nfe=cost, reward_calls=1):
            _unvisit(node)
            spend.stopped[k] = True
            break
        spend.allowance.spend(k, nfe=cost, reward_calls=1)
        parents.append(node)
    return parents


def _expand(process, cond, state: T.SearchTree, picks: list[tuple[int, T.Node]], reward, *, generator, trace,
            method: str) -> tuple[list[T.Node], Tensor]:
    """Roll out one new child under each picked parent, add every rollout state to the tree, score, back up."""
    rows = torch.tensor([k for k, _ in picks], dtype=torch.long)  # (K,)
    starts = [max(p.step, 0) for _, p in picks]
    from_root = [p.step == T.ROOT_STEP for _, p in picks]
    noise = iter(process.init_noise(sum(from_root), generator)) if any(from_root) else iter(())
    x_start = [next(noise) if root else p.x for root, (_, p) in zip(from_root, picks)]  # K × (*latent_shape)
    x_final, snaps = rollout(process, cond, rows, starts, torch.stack(x_start), state.levels,
                             noise_level=state.noise_level, generator=generator, trace=trace)
    prompts = [state.prompts[k] for k, _ in picks]
    r = score_latents(process, reward, x_final, prompts, trace=trace, method=method)  # (K,)
    leaves = []
    for e, (k, parent) in enumerate(picks):
        node = parent
        for level in state.levels:
            if level < starts[e] or (level == starts[e] and not from_root[e]):
                continue
            src = x_start[e] if level == starts[e] else snaps[level][e]
            node = node.add_child(T.Node(step=level, x=src, visits=1))
        node.value = float(r[e])
        T.backup(node, state.lam)
        state.record_leaf(k, node)
        state.nfe[k] += state.last_step - starts[e]
        leaves.append(node)
    return leaves, r


def search_rounds(process, reward, cond, state: T.SearchTree, *, choose: Callable[[T.Node], T.Node], spend: _Spend,
                  per_round: int, widen: tuple[float, float], generator, trace: Trace, method: str) -> Iterator[StepInfo]:
    """The anytime loop: one round = up to ``per_round`` new rollouts per prompt, batched together."""
    rnd = 0
    while True:
        picks = [(k, p) for k in range(len(state.prompts)) for p in _select(state, k, choose, spend, per_round, widen)]
        if not picks:
            return
        leaves, r = _expand(process, cond, state, picks, reward, generator=generator, trace=trace, method=method)
        best = [None if b is None else b.value for b in state.best]
        trace.record(round=rnd, nfe=trace.nfe, tree_nfe=list(state.nfe), rollouts=list(state.rollouts),
                     best_reward=best, new_rewards=r.tolist())
        yield StepInfo(step=rnd, x=torch.stack([leaf.x for leaf in leaves]), nfe=trace.nfe,
                       extra={"rewards": r, "best_reward": best, "rollouts": list(state.rollouts),
                              "tree_nfe": list(state.nfe)})
        rnd += 1


# ---- public methods -----------------------------------------------------------------------------

@dataclass(frozen=True)
class TreeOptions:
    """The keywords ``dts`` and ``dts_star`` share: the tilt, the rollouts, the tree's shape, the kernel."""

    lam: float
    rollouts: Optional[int]
    rollouts_per_round: int
    preset: str
    branch_every: Optional[int]
    branch_steps: Optional[Sequence[int]]
    widen_c: Optional[float]
    widen_alpha: Optional[float]
    noise_level: object
    eta: Optional[float]
    tree: Optional[T.SearchTree]


def _run(process, reward, prompts, o: TreeOptions, rule: Callable[[float], Callable[[T.Node], T.Node]], *,
         generator, budget, callback, method: str, inf_lam: bool):
    """Grow every prompt's tree with the selection ``rule(λ)`` until the rollouts or the budget are spent."""
    prompts = toolkit.prompt_list(method, prompts)
    toolkit.check_reward(method, reward)
    shape = _tree_shape(method, o.preset, process.num_steps, widen_c=o.widen_c, widen_alpha=o.widen_alpha,
                        branch_every=o.branch_every)
    lam = toolkit.number(method, "lam", o.lam, positive=True, allow_inf=inf_lam, maximum=toolkit.MAX_LAM)
    widen = (toolkit.number(method, "widen_c", shape["widen_c"], positive=True),
             toolkit.number(method, "widen_alpha", shape["widen_alpha"], positive=True))
    per_round = toolkit.integer(method, "rollouts_per_round", o.rollouts_per_round)
    levels = branching_levels(process.num_steps, shape["branch_every"], o.branch_steps, method)
    trace = toolkit.plan(method, len(prompts), budget, unit_nfe=process.num_steps, unit="one rollout")
    n_rollouts = _default_rollouts(o.rollouts, budget, method)
    level = toolkit.noise_level(process, method, o.noise_level, o.eta)
    if level == 0:
        raise ValueError(f"{method}: noise_level=0 makes the kernel deterministic, so a node can have only one "
                         f"distinct child; use noise_level > 0 (default: η=1 diffusion, a=0.7 flow)")
    state = _state_for(o.tree, prompts, levels, lam, level, method)
    spend = _Spend(len(prompts), budget, n_rollouts)
    cond = process.prepare(prompts)
    toolkit.drain(search_rounds(process, reward, cond, state, choose=rule(lam), spend=spend, per_round=per_round,
                                widen=widen, generator=generator, trace=trace, method=method), callback)
    if any(b is None for b in state.best):
        raise ValueError(f"{method}: no rollout fitted the budget; raise Budget(nfe=...) to at least "
                         f"{process.num_steps} per prompt")
    return state, trace


def dts(process, reward, prompts, *, generator: Optional[torch.Generator] = None, budget: Optional[Budget] = None,
        callback=None, lam: float = 1.0, rollouts: Optional[int] = None, rollouts_per_round: int = 1,
        num_samples: int = 1, preset: str = "steer", branch_every: Optional[int] = None,
        branch_steps: Optional[Sequence[int]] = None, widen_c: Optional[float] = None,
        widen_alpha: Optional[float] = None, noise_level=toolkit.STOCHASTIC, eta: Optional[float] = None,
        tree: Optional[T.SearchTree] = None) -> SearchResult:
    """Diffusion Tree Sampling (Jain et al. 2025): grow the tree with Boltzmann selection, then draw
    ``num_samples`` samples per prompt from its policy, targeting p_θ(x_0)·exp(λ·r(x_0)).

    Runs ``rollouts`` new rollouts per prompt (default 32 without a budget) or until ``budget`` is
    spent. ``images``/``rewards`` are the first sample per prompt; ``candidates`` (P, num_samples, 3, H, W)
    all of them; ``tree`` the state to continue from.
    """
    method = "dts"
    toolkit.integer(method, "num_samples", num_samples)
    options = TreeOptions(lam, rollouts, rollouts_per_round, preset, branch_every, branch_steps, widen_c, widen_alpha,
                          noise_level, eta, tree)
    state, trace = _run(process, reward, prompts, options, lambda lam: T.boltzmann_rule(lam, generator),
                        generator=generator, budget=budget, callback=callback, method=method, inf_lam=False)
    picked = [T.sample_leaves(root, state.last_step, state.lam, num_samples, generator) for root in state.roots]
    lat = torch.stack([leaf.x for row in picked for leaf in row])  # (P*K, *latent_shape), drawn order
    rew = torch.tensor([[leaf.value for leaf in row] for row in picked], dtype=torch.float32)  # (P, K)
    return toolkit.from_ranked(process, state.prompts, trace, lat, rew, result_cls=SearchResult, tree=state)


def dts_star(process, reward, prompts, *, generator: Optional[torch.Generator] = None,
             budget: Optional[Budget] = None, callback=None, lam: float = 1.0, exploration: float = 1.0,
             rollouts: Optional[int] = None, rollouts_per_round: int = 1, preset: str = "steer",
             branch_every: Optional[int] = None, branch_steps: Optional[Sequence[int]] = None,
             widen_c: Optional[float] = None, widen_alpha: Optional[float] = None,
             noise_level=toolkit.STOCHASTIC, eta: Optional[float] = None,
             tree: Optional[T.SearchTree] = None) -> SearchResult:
    """Diffusion Tree Search, DTS* (Jain et al. 2025): the same tree with UCT selection
    argmax v̂ + c·sqrt(log N_parent / N_child) (c = ``exploration``; ``lam`` may be ``inf`` for a max
    backup); returns the best leaf found per prompt. Continuing with ``tree=result.tree`` and more
    budget never returns a worse reward.
    """
    method = "dts_star"
    exploration = toolkit.number(method, "exploration (UCT constant c)", exploration)
    options = TreeOptions(lam, rollouts, rollouts_per_round, preset, branch_every, branch_steps, widen_c, widen_alpha,
                          noise_level, eta, tree)
    state, trace = _run(process, reward, prompts, options, lambda lam: T.uct_rule(exploration),
                        generator=generator, budget=budget, callback=callback, method=method, inf_lam=True)
    lat = torch.stack([b.x for b in state.best])  # (P, *latent_shape)
    rew = torch.tensor([b.value for b in state.best], dtype=torch.float32)  # (P,)
    return toolkit.result(process, state.prompts, trace, lat, rew, result_cls=SearchResult, tree=state)
