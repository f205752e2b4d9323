"""Edge-level ground truth of the planted models, verified by path patching.

Each planted model's card names its circuit *heads*; this module adds the circuit's *edges* over the
model's :class:`~harness.models.graph.EdgeGraph` (``0.1->1.2:v``, ``2.0->logits``, ...), keyed by model
name in :data:`PLANTED_EDGES`, without touching the committed weights or cards.

Definition.  The planted mechanism says which head reads which and through which input (a duplicate-token
head's query reads the repeated name, the S-inhibition head's value reads it, the name mover's query
reads the S-inhibition signal, the name mover writes the answer: :data:`MECHANISMS`); what else the trained
model routes through its MLPs and direct paths is measured by **path patching** (Wang et al. 2022;
Goldowsky-Dill et al. 2023) on fresh prompts: for each edge ``u -> v`` alone, ``v``'s input gets ``u``'s
output from the paired corrupted prompt (the task's counterfactual: ABC for IOI, YY = 01 for greater-than)
while every other path stays clean, and its effect is ``(m(clean) - m(edge patched)) / (m(clean) -
m(corrupted))``, the fraction of the clean-corrupted gap it carries.  The ground truth
(:func:`define_edges`) is every edge between circuit components (circuit heads, MLPs, input, logits) with
``|effect| >=`` :data:`EDGE_THRESHOLD`, plus the mechanism's edges, minus edges cut off from the input or
the logits.  Verification (:func:`verify_edges`): every mechanism edge carries ``>=`` the threshold (a
redundant pair patched together), and with only the ground-truth edges kept (every other edge patched from
the corrupted run) the task metric recovers (``faithfulness``); the largest effects left outside are reported.

No scored method uses this intervention as it is: ``acdc-edges`` patches each edge *on top of* the edges
it removed before, on the fit prompts; ``eap-edges`` / ``eap-ig-edges`` estimate the effect from
gradients.  Verification runs on :data:`VERIFY_PROMPTS` prompts from seed :data:`VERIFY_SEED` (the
tasks' fit and eval prompts come from seeds ``2 * seed`` and ``2 * seed + 1``).
``python -m harness.tasks.circuits.edge_truth MODEL`` recomputes the numbers stored in
:mod:`harness.tasks.circuits.planted_edges`; ``tests/test_circuit_edges.py`` re-checks planted-ioi's on other
prompts.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import torch

from harness.data import circuits as D
from harness.models.base import HookedModel
from harness.models.graph import EdgeGraph
from harness.tasks.circuits.planted_edges import PLANTED_EDGES

#: |path-patching effect| at or above which an edge is in the ground truth (fraction of the clean-corrupted gap).
EDGE_THRESHOLD = 0.05
VERIFY_PROMPTS = 512
VERIFY_SEED = 987_654
#: Edge sets patched per run_with_edges call during the scan.
_SETS_PER_CALL = 64

#: What each planted model's design implies at edge level (roles in its card): ``chain`` edges (a ``*`` channel:
#: at least one of q / k / v), and ``redundant`` groups of edges that each suffice (verified together).
MECHANISMS: dict[str, dict[str, tuple]] = {
    "planted-ioi": {"chain": ("input->0.1:q", "0.1->1.2:v", "1.2->2.0:q", "2.0->logits"), "redundant": ()},
    "planted-greater-than": {"chain": ("input->0.3:v", "0.3->1.0:*", "1.0->2.1:*"), "redundant": ()},
    **{f"planted-ioi-{trap}": {"chain": ("input->0.5:q", "0.5->1.3:v", "1.3->2.6:q", "2.6->logits"), "redundant": ()}
       for trap in ("busy", "saturated", "saturated-sharp", "opposing")},
    "planted-ioi-negative": {"chain": ("input->0.5:q", "0.5->1.3:v", "1.3->2.6:q", "2.6->logits", "1.3->2.2:q",
                                       "2.2->logits"), "redundant": ()},
    "planted-ioi-redundant": {"chain": ("input->0.5:q", "2.6->logits"),
                              "redundant": (("0.5->1.3:v", "0.5->1.6:v"), ("1.3->2.6:q", "1.6->2.6:q"))},
    # 2.1's effect has the prompt's order's sign and cancels in the mean: its edges count by their per-prompt effect
    "planted-ioi-cancel": {"chain": ("input->0.5:q", "0.5->1.3:v", "1.3->2.6:q", "2.6->logits"), "redundant": (),
                           "cancel_heads": ("2.1",), "cancel": ("2.1->logits",)},
}


def edge_ground_truth(model: HookedModel) -> tuple[np.ndarray, str] | None:
    """``(bool [n_edges], source)`` for a planted model whose card names one of :data:`PLANTED_EDGES`, else None."""
    card = getattr(model, "card", None)
    name = card.get("name") if isinstance(card, dict) else None
    entry = PLANTED_EDGES.get(name)
    if entry is None:
        return None
    return model.edge_graph().mask(entry["edges"]), f"path-patched edges of {name}"


def mlp_ground_truth(model: HookedModel) -> np.ndarray | None:
    """Bool ``[n_layers]``: the MLPs in a planted model's ground-truth circuit, i.e. those on at least one of its
    path-patched ground-truth edges (:func:`edge_ground_truth`); None where the model has no edge truth or no
    MLPs."""
    found = edge_ground_truth(model) if int(getattr(model, "d_mlp", 0) or 0) else None
    if found is None:
        return None
    out = np.zeros(model.n_layers, dtype=bool)
    for name in model.edge_graph().names(found[0]):
        for node in name.split("->"):
            node = node.split(":")[0]
            if node.startswith("mlp"):
                out[int(node[3:])] = True
    return out


def _split(model: HookedModel, n_prompts: int, seed: int) -> D.Split:
    task = model.card["task"]
    vocabulary = D.ioi_vocabulary if task == "ioi" else D.greater_than_vocabulary
    split_fn = D.ioi_split if task == "ioi" else D.greater_than_split
    return split_fn(model, n_prompts, seed, vocabulary(model))


@torch.no_grad()
def _metrics(model: HookedModel, split: D.Split, keep: torch.Tensor, clean, corrupted,
             per_prompt: bool = False) -> np.ndarray:
    """The mean metric per edge set of ``keep`` (``[sets]``), or with ``per_prompt`` each prompt's (``[sets, n]``)."""
    ids = split.metric.token_ids
    fn = split.metric.per_prompt_fn if per_prompt else split.metric.from_last
    parts = [fn(model.run_with_edges(clean, k, corrupted.sources, token_ids=ids)) for k in keep.split(_SETS_PER_CALL)]
    return torch.cat(parts).to(torch.float64).cpu().numpy()


@torch.no_grad()
def path_patching(model: HookedModel, split: D.Split, edges: np.ndarray | None = None,
                  per_prompt: bool = False) -> dict[str, Any]:
    """Isolated path patching of every edge (or the indices ``edges``) on ``split``, and the anchors.

    Returns ``{"effect": float64 [n], "m_clean", "m_corrupted"}`` with ``effect = (m(clean) - m(edge patched
    from the corrupted run)) / (m(clean) - m(corrupted))``; with ``per_prompt`` also ``"abs_effect"``, the mean
    over prompts of ``|m_i(clean) - m_i(edge patched)|`` over the same gap of the mean metric (an edge whose
    effect changes sign across prompts has a small ``effect`` and a large ``abs_effect``)."""
    graph = model.edge_graph()
    clean, corrupted = model.edge_run(split.clean), model.edge_run(split.corrupted)
    idx = np.arange(graph.n_edges) if edges is None else np.asarray(edges)
    keep = torch.ones(len(idx), graph.n_edges, dtype=torch.bool, device=model.device)
    keep[torch.arange(len(idx)), torch.as_tensor(idx)] = False
    anchors = torch.stack([torch.ones(graph.n_edges, dtype=torch.bool), torch.zeros(graph.n_edges, dtype=torch.bool)])
    if not per_prompt:
        m_clean, m_corr = _metrics(model, split, anchors.to(model.device), clean, corrupted)
        m = _metrics(model, split, keep, clean, corrupted)
        return {"effect": (m_clean - m) / (m_clean - m_corr), "m_clean": float(m_clean), "m_corrupted": float(m_corr)}
    a = _metrics(model, split, anchors.to(model.device), clean, corrupted, per_prompt=True)  # [2, n]
    m = _metrics(model, split, keep, clean, corrupted, per_prompt=True)  # [edges, n]
    m_clean, m_corr = a.mean(-1)
    gap = m_clean - m_corr
    return {"effect": (m_clean - m.mean(-1)) / gap, "abs_effect": np.abs(a[0][None] - m).mean(-1) / gap,
            "m_clean": float(m_clean), "m_corrupted": float(m_corr)}


@torch.no_grad()
def circuit_check(model: HookedModel, split: D.Split, truth: np.ndarray) -> dict[str, Any]:
    """The ground-truth edge circuit on ``split``: its faithfulness (only its edges kept, every other edge
    patched from the corrupted run) and, per edge, the part of the effect lost when it alone is also patched."""
    graph = model.edge_graph()
    clean, corrupted = model.edge_run(split.clean), model.edge_run(split.corrupted)
    members = np.nonzero(truth)[0]
    keep = torch.as_tensor(truth, device=model.device).repeat(len(members) + 3, 1)
    keep[torch.arange(len(members)), torch.as_tensor(members)] = False
    keep[-2], keep[-1] = True, False  # the full model, the empty circuit
    m = _metrics(model, split, keep, clean, corrupted)
    gap = m[-2] - m[-1]
    return {"faithfulness": float((m[-3] - m[-1]) / gap),
            "in_circuit_drop": {graph.edges[e]: float((m[-3] - m[i]) / gap) for i, e in enumerate(members)}}


def define_edges(graph: EdgeGraph, effect: np.ndarray, circuit_heads, mechanism: dict[str, tuple],
                 abs_effect: np.ndarray | None = None) -> np.ndarray:
    """The ground-truth rule: bool ``[n_edges]``, the edges between circuit components (the circuit heads, the
    MLPs, the input, the logits) with ``|effect| >=`` :data:`EDGE_THRESHOLD`, and every edge the mechanism names
    (its redundant edges included: each alone carries little, by design), kept where they connect the input to
    the logits (:func:`connected`).  Edges of non-circuit heads are never in it: the node-level verification in
    the card shows those heads do not matter.  A model with sign-cancelling heads (``mechanism["cancel_heads"]``)
    also gets every edge between circuit components into or out of such a head whose mean per-prompt
    |effect| (``abs_effect``, :func:`path_patching` with ``per_prompt``) is at least the threshold, and the
    mechanism's ``cancel`` edges."""
    allowed = _between_circuit_components(graph, circuit_heads)
    truth = allowed & (np.abs(effect) >= EDGE_THRESHOLD)
    if mechanism.get("cancel_heads"):
        truth |= allowed & _touches(graph, mechanism["cancel_heads"]) & (abs_effect >= EDGE_THRESHOLD)
    named = [e for e in mechanism["chain"] if not e.endswith("*")] + [e for g in mechanism["redundant"] for e in g]
    named += list(mechanism.get("cancel", ()))
    truth[graph.mask(named)] = True
    return connected(graph, truth)


def connected(graph: EdgeGraph, edges: np.ndarray) -> np.ndarray:
    """The edges of ``edges`` (bool ``[n_edges]``) on a path from the input to the logits within ``edges``: an
    edge whose source has no incoming edge (and is not the input), or whose target node has no outgoing edge (and
    is not the logits), is dropped, until none is (MIB prunes its circuits the same way)."""
    keep = np.asarray(edges, dtype=bool).copy()
    src = [graph.sources[u] for u in graph.edge_index[:, 0]]
    dst = [graph.targets[v].split(":")[0] for v in graph.edge_index[:, 1]]
    while True:
        fed = {"input"} | {d for d, k in zip(dst, keep) if k}
        read = {"logits"} | {u for u, k in zip(src, keep) if k}
        new = keep & np.array([u in fed and d in read for u, d in zip(src, dst)])
        if (new == keep).all():
            return keep
        keep = new


def _between_circuit_components(graph: EdgeGraph, circuit_heads) -> np.ndarray:
    """Bool ``[n_edges]``: edges whose source and target are circuit heads, MLPs, the input or the logits."""
    circuit = {f"{int(l)}.{int(h)}" for l, h in circuit_heads}

    def part_of_circuit(node: str) -> bool:
        node = node.split(":")[0]
        return node in circuit or node in ("input", "logits") or node.startswith("mlp")

    return np.array([part_of_circuit(u) and part_of_circuit(v) for u, v in (e.split("->") for e in graph.edges)])


def _touches(graph: EdgeGraph, heads) -> np.ndarray:
    """Bool ``[n_edges]``: edges whose source or target is one of ``heads`` (``"layer.head"`` names)."""
    heads = set(heads)
    return np.array([u in heads or v.split(":")[0] in heads for u, v in (e.split("->") for e in graph.edges)])


def _channels(graph: EdgeGraph, edge: str) -> list[int]:
    return [graph.index(edge[:-1] + c) for c in "qkv"] if edge.endswith("*") else [graph.index(edge)]


def verify_edges(model: HookedModel, name: str, n_prompts: int = VERIFY_PROMPTS, seed: int = VERIFY_SEED,
                 edges: list[str] | None = None) -> dict[str, Any]:
    """Path-patching verification of model ``name``'s ground-truth edges (``edges``; default: the rule of
    :func:`define_edges` applied to this scan): every edge's isolated effect, the mechanism's edges (a ``*``
    chain edge by its strongest channel, a redundant group patched together), the largest effect outside the
    ground truth (among circuit components, and of any edge touching a non-circuit head), and the ground-truth
    circuit's faithfulness and in-circuit drops."""
    graph = model.edge_graph()
    mechanism = MECHANISMS[name]
    split = _split(model, n_prompts, seed)
    cancel = bool(mechanism.get("cancel_heads"))
    scan = path_patching(model, split, per_prompt=cancel)
    effect, abs_effect = scan["effect"], scan.get("abs_effect")
    truth = graph.mask(edges) if edges is not None else define_edges(graph, effect, model.card["circuit_heads"],
                                                                     mechanism, abs_effect)
    allowed = _between_circuit_components(graph, model.card["circuit_heads"])
    def largest(where: np.ndarray) -> list:
        i = int(np.argmax(np.where(where, np.abs(effect), -np.inf)))
        return [graph.edges[i], round(float(effect[i]), 4)]

    chain = {e: round(float(max(effect[_channels(graph, e)], key=abs)), 4) for e in mechanism["chain"]}
    joint = {}
    for group in mechanism["redundant"]:
        joint[" + ".join(group)] = round(float(path_patching_group(model, split, graph.mask(group))), 4)
    check = circuit_check(model, split, truth)
    passed = (min(abs(v) for v in chain.values()) >= EDGE_THRESHOLD
              and all(abs(v) >= EDGE_THRESHOLD for v in joint.values()))
    extra: dict[str, Any] = {}
    if cancel:  # the cancelling heads' edges: per-prompt |effect| (what puts them in) next to the mean effect
        touching = np.nonzero(truth & _touches(graph, mechanism["cancel_heads"]))[0]
        extra["cancel_abs_effect"] = {graph.edges[i]: round(float(abs_effect[i]), 4) for i in touching}
        named = {e: round(float(abs_effect[graph.index(e)]), 4) for e in mechanism["cancel"]}
        extra["cancel_mechanism_abs_effect"] = named
        passed = passed and min(named.values()) >= EDGE_THRESHOLD
        outside = ~truth & _touches(graph, mechanism["cancel_heads"])
        i = int(np.argmax(np.where(outside, abs_effect, -np.inf)))
        extra["largest_other_cancel_abs_effect"] = [graph.edges[i], round(float(abs_effect[i]), 4)]
    return {
        "n_prompts": n_prompts, "seed": seed, "threshold": EDGE_THRESHOLD, "passed": bool(passed),
        "m_clean": round(scan["m_clean"], 6), "m_corrupted": round(scan["m_corrupted"], 6),
        "edges": graph.names(truth),
        "effect": {graph.edges[i]: round(float(effect[i]), 4) for i in np.nonzero(truth)[0]},
        "mechanism": chain, "redundant_joint": joint,
        "largest_other": largest(~truth & allowed), "largest_noncircuit_head": largest(~allowed),
        "faithfulness": round(check["faithfulness"], 4),
        "in_circuit_drop": {k: round(v, 4) for k, v in check["in_circuit_drop"].items()},
        **extra,
    }


@torch.no_grad()
def path_patching_group(model: HookedModel, split: D.Split, group: np.ndarray) -> float:
    """The effect of patching the edges of ``group`` (bool ``[n_edges]``) together, as :func:`path_patching`'s."""
    clean, corrupted = model.edge_run(split.clean), model.edge_run(split.corrupted)
    keep = torch.stack([torch.ones_like(torch.as_tensor(group)), torch.zeros_like(torch.as_tensor(group)),
                        ~torch.as_tensor(group)]).to(model.device)
    m_clean, m_corr, m = _metrics(model, split, keep, clean, corrupted)
    return (m_clean - m) / (m_clean - m_corr)


def main(argv: list[str]) -> None:
    """``python -m harness.tasks.circuits.edge_truth MODEL [N_PROMPTS]``: the verification numbers as JSON."""
    from harness.embedded.planted import load_planted

    name = argv[0]
    torch.set_num_threads(1)
    model = load_planted(name)
    edges = argv[2].split(",") if len(argv) > 2 else None
    print(json.dumps(verify_edges(model, name, int(argv[1]) if len(argv) > 1 else VERIFY_PROMPTS, edges=edges),
                     indent=1))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
