"""Device placement: every family on a device that is not the CPU, the determinism settings, and CUDA vs CPU.

The guard that runs everywhere is :mod:`fake_device`: a second torch device (``fakegpu``) backed by the CPU
that refuses, as CUDA does, an op mixing its tensors with CPU tensors (see that module for why a run beats
a static scan).  ``harness selftest`` on it reproduced the failures of ``--device cuda`` on an H200 (the
planted models' verification, the SAE decode, the reconstruction gather), so a new device bug in a path the
selftest covers fails here on a CPU-only machine.  The CUDA tests at the end run where CUDA is present.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fake_device
from harness.core import registry
from harness.core.cell import make_cell
from harness.core.context import RunContext
from harness.core.provenance import provenance
from harness.core.runner import run_cell
from harness.core.seeding import deterministic_device, determinism_settings
from harness.core.selftest import selftest
from harness.core.task import tolerance

#: one task per kind of data path: both circuit metrics (logit difference on a few columns, probabilities
#: over the vocabulary), both reconstruction hooks of the embedded LM and the MiniLM encoder, the known-truth
#: synthetic activations (decoder directions read back through decode), a clustering task, an ICL predictor
#: task and an ICL probe task; every method of each family
FAKE_DEVICE_TASKS = ["circuits/ioi", "circuits/greater_than", "reconstruction/embedded-resid",
                     "reconstruction/embedded-z", "reconstruction/minilm-z", "reconstruction/synthetic-64",
                     "clustering/wine", "icl/linear-d5", "icl/probe-d5"]


@pytest.fixture
def fake():
    ok, why = fake_device.available()
    if not ok:
        pytest.skip(f"the fake second device needs torch's Python PrivateUse1 backend, which failed here: {why}")
    return fake_device.device()


# ------------------------------------------------------------------------ the fake device itself
def test_fake_device_refuses_what_cuda_refuses(fake):
    x = torch.arange(6.0).reshape(2, 3).to(fake)
    assert x.device == fake and float(x.sum()) == 15.0
    with pytest.raises(RuntimeError, match="same device"):
        x + torch.ones(2, 3)
    with pytest.raises(RuntimeError, match="same device"):
        torch.nn.functional.cross_entropy(x, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="same device"):
        x.gather(1, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(RuntimeError, match="generator"):
        torch.randn(3, generator=torch.Generator().manual_seed(0), device=fake)
    with pytest.raises(TypeError, match="numpy"):
        x.numpy()
    # what CUDA accepts: 0-dim CPU tensors, CPU index tensors, moves, scalars and lists out
    assert (x + torch.tensor(1.0)).cpu().tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert x[torch.tensor([1, 0])].cpu()[0].tolist() == [3.0, 4.0, 5.0]
    assert x.tolist()[1] == [3.0, 4.0, 5.0] and x.sum().item() == 15.0
    w = torch.zeros(3, device=fake, requires_grad=True)
    (w * torch.arange(3.0, device=fake)).sum().backward()
    assert w.grad.device == fake and w.grad.cpu().tolist() == [0.0, 1.0, 2.0]


# ------------------------------------------------------------------ every family off the CPU
def _tiny_circuit_data(device: torch.device):
    """A 2-layer, 2-head GPT on ``device`` and CPU prompt tensors, as the conformance fixture builds them."""
    from harness.models.gpt import GPT, GPTConfig, HookedGPT
    from harness.models.tokenizer import WordTokenizer
    from harness.protocols.circuits import CircuitData, LastTokenMetric

    torch.manual_seed(0)
    cfg = GPTConfig(n_layers=2, n_heads=2, d_model=16, d_mlp=32, vocab_size=12, n_ctx=6)
    model = HookedGPT(GPT(cfg).eval(), WordTokenizer([f"w{i}" for i in range(12)]), model_id="tiny", device=device)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 12, (8, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1:3] = torch.randint(0, 12, (8, 2), generator=g)
    metric = LastTokenMetric(torch.tensor([1, 2]), lambda last: last[..., 0] - last[..., 1], "logit_diff")
    return CircuitData(model, clean, corrupted, metric, "tiny")


def test_every_family_runs_on_a_device_that_is_not_the_cpu(fake, tmp_path):
    """The selftest matrix (its tiny settings) of one task per data path, on the fake device, cold cache
    (so activations are gathered and planted models verified on the device, as a first GPU run does)."""
    results = selftest(fake, tasks=FAKE_DEVICE_TASKS, cache_dir=tmp_path)
    assert {r.task for r in results} == set(FAKE_DEVICE_TASKS)
    assert [r.line() for r in results if not r.ok] == []


def test_paths_the_selftest_leaves_out_run_on_the_device(fake, tmp_path):
    """Helpers a cell may reach that the selftest's default methods do not: the per-head patching loop,
    a user's SAE, the ICL learner moved to a device, the metrics handed device tensors."""
    from harness.baselines.circuits import act_patch_batched, act_patch_loop, patch_replacement
    from harness.embedded.icl_learner import TransformerLearner, get_spec, untrained_model
    from harness.embedded.planted import induction_batch, induction_loss
    from harness.metrics.reconstruction import l0, next_token_cross_entropy
    from harness.protocols.reconstruction import SparseCodes, validate_codes
    from harness.sae import train_topk_sae
    from harness.methods.sae import UserSAE

    data = _tiny_circuit_data(fake)
    rep = patch_replacement(data.model, data, "mean")
    assert np.allclose(act_patch_loop(data.model, data, rep), act_patch_batched(data.model, data, rep), atol=1e-5)

    logits = torch.randn(2, 5, 7).to(fake)
    tokens = torch.randint(0, 7, (2, 5))  # CPU, as token windows are
    assert next_token_cross_entropy(logits, tokens).device == fake
    toks, mask = induction_batch(np.random.default_rng(0), 4, 6, 7)
    assert math.isfinite(float(induction_loss(torch.randn(4, 6, 7).to(fake), toks, mask)))

    codes = SparseCodes(torch.tensor([[0, 2], [1, 2]]).to(fake), torch.ones(2, 2).to(fake), 4)
    assert l0(codes) == 2.0

    acts = torch.randn(64, 8)
    sae, _ = train_topk_sae(acts.to(fake), 16, 2, epochs=1, batch_size=32)
    sae.to("cpu").save(tmp_path / "sae")
    method = UserSAE(path=str(tmp_path / "sae"))
    method.setup(RunContext(seed=0, device=fake, cache_dir=tmp_path))
    method.fit(acts)
    x_hat = method.decode(validate_codes(method.encode(acts), 64))
    assert x_hat.device.type == "cpu" and x_hat.shape == (64, 8)

    learner = TransformerLearner(untrained_model(get_spec("icl-d5").arch).to(fake))
    rng = np.random.default_rng(0)
    xs, ys, xq = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 5))
    assert learner.predict_prefixes(xs, ys, xq).shape[:2] == (3, 5)


# ------------------------------------------------------------------ determinism and provenance
def test_deterministic_settings_apply_on_cuda_only_and_are_restored(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = determinism_settings()
    with deterministic_device(torch.device("cpu")):
        assert determinism_settings() == before
    with deterministic_device(torch.device("cuda")):  # the flags are plain settings: no GPU needed to set them
        inside = determinism_settings()
    assert inside == {
        "deterministic_algorithms": True, "warn_only": True, "cuda_matmul_allow_tf32": False,
        "cudnn_allow_tf32": False, "cudnn_deterministic": True, "cudnn_benchmark": False,
        "cublas_workspace_config": ":4096:8", "sdp_fused_kernels": False,
    }
    after = determinism_settings()
    assert {k: v for k, v in after.items() if k != "cublas_workspace_config"} == \
        {k: v for k, v in before.items() if k != "cublas_workspace_config"}


def test_user_cublas_setting_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic_device(torch.device("cuda")):
        assert determinism_settings()["cublas_workspace_config"] == ":16:8"


def test_provenance_names_device_type_and_settings():
    prov = provenance(torch.device("cpu"))
    assert prov["device"] == "cpu" and prov["device_type"] == "cpu" and prov["device_name"]
    assert set(prov["determinism"]) >= {"deterministic_algorithms", "cuda_matmul_allow_tf32", "cudnn_benchmark"}
    assert provenance("cuda:0")["device_type"] == "cuda"


# ------------------------------------------------------------------ CUDA (where present)
#: one cell per family, at the task's own settings (not the selftest's), compared with the CPU
CUDA_CELLS = [("circuits/ioi", "eap"), ("circuits/greater_than", "act-patch-mean"),
              ("reconstruction/embedded-resid", "topk-sae"), ("clustering/wine", "ae-kmeans"),
              ("icl/linear-d5", "icl-transformer")]


def _cell_record(task_name: str, method_name: str, device: torch.device, cache_dir) -> dict:
    t, m = registry.get_task(task_name), registry.get_method(method_name)
    task = t.create()
    cell = make_cell(t, task, task.resolve_config({}), m, {}, 0)
    record = run_cell(cell, RunContext(seed=0, device=device, cache_dir=cache_dir), {}).to_dict()
    assert record["status"] == "ok", record["error"]
    return record


def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine: the CUDA vs CPU comparisons run where it is")


@pytest.mark.slow
@pytest.mark.parametrize("task_name,method_name", CUDA_CELLS)
def test_cuda_cell_agrees_with_the_cpu_cell(task_name, method_name, tmp_path):
    """Every gated metric within the task's own tolerance of the CPU value (the tolerance ``harness check``
    applies to a change of code); the CUDA record names its device and the deterministic settings."""
    _needs_cuda()
    cpu = _cell_record(task_name, method_name, torch.device("cpu"), tmp_path)
    gpu = _cell_record(task_name, method_name, torch.device("cuda"), tmp_path)
    assert gpu["cell_key"] == cpu["cell_key"]  # the device is not part of a cell's identity
    prov = gpu["provenance"]
    assert prov["device_type"] == "cuda" and prov["device_name"]
    det = prov["determinism"]
    assert det["deterministic_algorithms"] and not det["cuda_matmul_allow_tf32"] and not det["sdp_fused_kernels"]
    specs = {s.name: s for s in registry.get_task(task_name).create().metrics}
    far = {name: (cpu["metrics"][name], gpu["metrics"][name]) for name, s in specs.items()
           if s.gated and name in cpu["metrics"]
           and abs(cpu["metrics"][name] - gpu["metrics"][name]) > tolerance(s.abs_tol, s.rel_tol, cpu["metrics"][name])}
    assert far == {}, f"{task_name} / {method_name}: (cpu, cuda) beyond tolerance: {far}"


@pytest.mark.slow
@pytest.mark.parametrize("task_name,method_name", [("circuits/ioi", "eap"), ("circuits/ioi", "act-patch-mean"),
                                                   ("reconstruction/embedded-resid", "topk-sae")])
def test_cuda_cell_repeats_bit_for_bit(task_name, method_name, tmp_path):
    """With the deterministic settings a CUDA cell gives the same numbers twice (timings aside); ``eap``
    differentiates through attention (the reason fused attention kernels are off)."""
    _needs_cuda()
    first, second = (_cell_record(task_name, method_name, torch.device("cuda"), tmp_path) for _ in range(2))
    untimed = [k for k in first["metrics"] if not k.endswith("_per_s")]
    assert {k: first["metrics"][k] for k in untimed} == {k: second["metrics"][k] for k in untimed}


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_hf_adapter_runs_on_the_device(fake, family):
    """The Hugging Face adapter of each family on the device: logits, resumed and full-forward patching,
    head gradients and the reconstruction sites, with tokens handed over on the CPU as the tasks do."""
    pytest.importorskip("transformers")
    from test_models_hf_causal import make_hf, make_tokenizer, rand_tokens, random_masks

    from harness.models import HFCausalLM
    from harness.models import activations as hook_acts

    cpu = HFCausalLM(make_hf(family=family, dtype=torch.float32), make_tokenizer())
    model = HFCausalLM(make_hf(family=family, dtype=torch.float32), make_tokenizer(), device=fake)
    toks, masks = rand_tokens(), random_masks()
    with torch.no_grad():
        assert torch.allclose(model.logits(toks).cpu(), cpu.logits(toks), atol=1e-5)
        rep = model.run_with_cache(rand_tokens(seed=9))[1]
        got = model.ablate_many(toks, masks, rep, token_ids=[2, 3])
        want = cpu.ablate_many(toks, masks, rep.cpu(), token_ids=[2, 3])
        assert got.device == fake and torch.allclose(got.cpu(), want, atol=1e-5)
    z, grad = model.head_gradients(toks, lambda logits: logits[:, -1, 2].sum())
    assert grad.device == fake and torch.isfinite(grad.cpu()).all()
    act, g = hook_acts.acts_and_grads(model, toks, 1, "z")
    assert act.device == fake and g.shape == act.shape
