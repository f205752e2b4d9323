"""Edge-level runs of the hooked models: the edge graph, the split q/k/v forward and edge patching.

Every model computation is checked against a hand-written forward of the same weights (explicit per-head
q / k / v projections, softmax attention and additive interventions at each target's input, float64), so
that neither the split forward nor the edge patching is tested against itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.models.graph import EdgeGraph
from test_circuits_methods import _one_thread, make_data, make_model  # noqa: F401  (_one_thread: autouse fixture)


# ------------------------------------------------------------- a hand-written split forward
def manual_forward(gpt, tokens: torch.Tensor, extra=None, embed: torch.Tensor | None = None):
    """``(logits, sources)`` of ``gpt`` on ``tokens``: every head's q, k and v computed from its own input,
    ``extra[target](sources) -> tensor`` added to that target's input (``sources``: name -> output so far)."""
    extra = extra or {}
    cfg = gpt.config
    H, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    s = tokens.shape[1]
    x = gpt.embed(tokens) + gpt.pos_embed(torch.arange(s)) if embed is None else embed
    src = {"input": x}
    mask = torch.ones(s, s, dtype=torch.bool).tril()

    def read(target, resid):
        return resid + extra[target](src) if target in extra else resid

    for layer, blk in enumerate(gpt.blocks):
        W, b = blk.attn.qkv.weight, blk.attn.qkv.bias
        outs = []
        for h in range(H):
            qkv = []
            for c, name in enumerate("qkv"):
                rows = slice(c * d + h * dh, c * d + (h + 1) * dh)
                qkv.append(blk.ln1(read(f"{layer}.{h}:{name}", x)) @ W[rows].T + b[rows])
            q, k, v = qkv
            att = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(~mask, float("-inf")).softmax(-1)
            outs.append((att @ v) @ blk.attn.out.weight[:, h * dh : (h + 1) * dh].T)
        for h in range(H):
            src[f"{layer}.{h}"] = outs[h]
        x = x + sum(outs) + blk.attn.out.bias
        if blk.mlp is not None:
            out = blk.mlp.fc_out(F.gelu(blk.mlp.fc_in(blk.ln2(read(f"mlp{layer}", x)))))
            src[f"mlp{layer}"] = out
            x = x + out
    return gpt.unembed(gpt.ln_f(read("logits", x))), src


def patched(corr_src: dict, edges: list[str]) -> dict:
    """``extra`` of :func:`manual_forward` that patches ``edges`` from a corrupted run's sources."""
    extra: dict = {}
    for edge in edges:
        u, v = edge.split("->")
        prev = extra.get(v)
        extra[v] = (lambda src, u=u, prev=prev: corr_src[u] - src[u] + (prev(src) if prev else 0))
    return extra


@pytest.fixture(scope="module")
def tiny():
    model = make_model()  # float64, 2 layers x 4 heads, MLPs, layer norm
    return model, make_data(model)


# ------------------------------------------------------------------------- the graph
def test_graph_shape_names_and_node_rule():
    g = EdgeGraph(3, 8, mlp=True)  # the trap models
    assert g.n_sources == 1 + 3 * 9 and g.n_targets == 3 * 25 + 1
    # heads of layer l read input + l (heads + mlp); mlp l also its own heads; logits all sources
    assert g.n_edges == sum(24 * (1 + 9 * l) + (1 + 9 * l + 8) for l in range(3)) + 28 == 802
    assert EdgeGraph(3, 4).n_edges == 262 and EdgeGraph(2, 4, mlp=False).n_edges == 12 * 1 + 12 * 5 + 9
    assert g.edges[0] == "input->0.0:q" and g.edges[-1] == "mlp2->logits"
    for name in ("0.5->1.3:q", "1.3->2.6:v", "2.6->logits", "1.3->mlp1", "mlp0->1.3:k", "input->mlp2"):
        assert g.edges[g.index(name)] == name
    for bad in ("1.3->1.2:q", "mlp1->1.3:q", "2.6->mlp1", "logits->2.0:q"):
        with pytest.raises(KeyError, match="not an edge"):
            g.index(bad)
    mask = g.mask(["0.5->1.3:v", "1.3->2.6:q"])
    assert g.names(mask) == ["0.5->1.3:v", "1.3->2.6:q"]
    scores = np.zeros(g.n_edges)
    scores[g.mask(["0.5->1.3:v", "0.5->2.6:k"])] = [2.0, -3.0]
    scores[g.index("mlp1->logits")] = 1.5
    nodes = g.node_scores(scores)  # a node's score = sum of |scores| of its outgoing edges
    assert nodes["heads"][0, 5] == 5.0 and nodes["heads"].sum() == 5.0 and nodes["mlps"].tolist() == [0, 1.5, 0]
    assert g.head_mask_of(mask).sum() == 2 and g.head_mask_of(mask)[0, 5] and g.head_mask_of(mask)[1, 3]


# ------------------------------------------------------------------- the split forward
def test_split_forward_equals_plain_forward(tiny):
    model, data = tiny
    logits = model.logits(data.clean).detach()
    run = model.edge_run(data.clean)
    assert torch.equal(model.unembed(run.resid_final), logits)  # nothing patched: the plain forward itself
    # every edge patched with the clean run's own outputs: every input goes through the split path
    keep = torch.zeros(1, model.edge_graph().n_edges, dtype=torch.bool)
    split = model.run_with_edges(run, keep, run.sources)[0]
    torch.testing.assert_close(split, logits[:, -1], rtol=0, atol=1e-12)
    with torch.no_grad():
        manual, src = manual_forward(model.model, data.clean)
    torch.testing.assert_close(manual, logits, rtol=0, atol=1e-12)
    names = model.edge_graph().sources
    torch.testing.assert_close(run.sources, torch.stack([src[n] for n in names], dim=2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("edges", [
    ["0.1->1.2:k"], ["input->1.3:q"], ["0.2->mlp0"], ["mlp0->logits"], ["input->0.0:v"], ["1.1->mlp1"],
    ["input->0.1:v", "0.1->1.2:k", "0.1->mlp0", "mlp0->1.0:q", "1.2->logits"],  # chained: kept edges carry patched values
])
def test_patching_edges_equals_manual_computation(tiny, edges):
    model, data = tiny
    g = model.edge_graph()
    run, corr = model.edge_run(data.clean), model.edge_run(data.corrupted)
    with torch.no_grad():
        _, corr_src = manual_forward(model.model, data.corrupted)
        want, _ = manual_forward(model.model, data.clean, patched(corr_src, edges))
    keep = torch.as_tensor(~g.mask(edges))[None].repeat(2, 1)
    keep[1] = True  # a second set in the same call: nothing patched
    got = model.run_with_edges(run, keep, corr.sources)
    torch.testing.assert_close(got[0], want[:, -1], rtol=0, atol=1e-10)
    torch.testing.assert_close(got[1], model.logits(data.clean)[:, -1].detach(), rtol=0, atol=1e-12)
    # the same set at other positions and with a few logit columns
    ids = data.metric.token_ids
    torch.testing.assert_close(model.run_with_edges(run, keep[:1], corr.sources, position=3, token_ids=ids)[0],
                               want[:, 3, ids], rtol=0, atol=1e-10)


def test_patching_every_edge_is_the_corrupted_run_and_sets_are_independent(tiny):
    model, data = tiny
    g = model.edge_graph()
    run, corr = model.edge_run(data.clean), model.edge_run(data.corrupted)
    rng = np.random.default_rng(0)
    keep = torch.as_tensor(rng.random((9, g.n_edges)) < 0.6)
    keep[0] = False
    together = model.run_with_edges(run, keep, corr.sources)
    torch.testing.assert_close(together[0], model.logits(data.corrupted)[:, -1].detach(), rtol=0, atol=1e-10)
    for i in range(1, 9):  # a set's logits do not depend on the other sets of the call
        torch.testing.assert_close(together[i], model.run_with_edges(run, keep[i : i + 1], corr.sources)[0],
                                   rtol=0, atol=1e-10)


def test_hugging_face_models_refuse_edges():
    transformers = pytest.importorskip("transformers")
    from harness.models.hf_causal import HFCausalLM
    from test_models_hf_causal import make_hf, make_tokenizer

    model = HFCausalLM(make_hf(), make_tokenizer(), model_id="tiny-gpt2")
    assert model.edge_graph().n_edges > 0  # the graph is the shape's; running it needs split inputs
    data = make_data(model)
    for run in (lambda: model.edge_run(data.clean), lambda: model.edge_gradients(data.clean, data.metric.from_logits)):
        with pytest.raises(HarnessError, match="split q/k/v inputs; supported: the harness's GPT models"):
            run()
    assert transformers is not None
