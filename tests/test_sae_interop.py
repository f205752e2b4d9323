"""SAEs of other libraries: SAELens and sparsify layouts built by hand from their documented formats load and
encode as an independent computation says; our SAEs export to SAELens and load back identically; user-sae
detects the layout; unsupported files fail with a ConfigError that says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.core import registry
from harness.core.context import RunContext
from harness.errors import ConfigError
from harness.sae import SAE, ArgmaxConfig, ReLUConfig, TopKConfig, load_sae
from harness.sae.interop import detect_layout, save_saelens

D, N = 12, 40


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D, N, generator=g), "b_enc": 0.1 * torch.randn(N, generator=g),
            "W_dec": torch.randn(N, D, generator=g) * (0.5 + torch.rand(N, 1, generator=g)),
            "b_dec": torch.randn(D, generator=g)}


def x_batch(n=64, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2


def write(directory: Path, files: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name.endswith(".json"):
            (directory / name).write_text(json.dumps(content))
        else:
            save_file({k: v.contiguous() for k, v in content.items()}, str(directory / name))
    return directory


def topk_dense(pre: torch.Tensor, k: int) -> torch.Tensor:
    top = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())


def dense(codes) -> torch.Tensor:
    return codes.to_dense() if hasattr(codes, "to_dense") else codes


def user_sae(path: Path, **params):
    m = registry.get_method("user-sae").cls.create({"path": str(path), **params})
    m.setup(RunContext(seed=0, device=torch.device("cpu"), cache_dir=Path("/nonexistent")))
    return m.fit(torch.zeros(3, D))


# ---------------------------------------------------------------------- SAELens
def test_saelens_v6_topk_with_decoder_norm_rescaling_equals_the_documented_computation(tmp_path):
    w, k = weights(), 5
    cfg = {"architecture": "topk", "d_in": D, "d_sae": N, "k": k, "rescale_acts_by_decoder_norm": True,
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "dtype": "float32", "device": "cpu", "metadata": {"sae_lens_version": "6.54.12", "hook_name": "x"}}
    path = write(tmp_path / "sl", {"cfg.json": cfg, "sae_weights.safetensors": w})
    assert detect_layout(path) == "saelens"
    sae = load_sae(path)
    x = x_batch()
    # SAELens TopKSAE: hidden_pre = (x - b_dec) @ W_enc + b_enc, times |W_dec_i|; topk, relu;
    # decode: (acts / |W_dec_i|) @ W_dec + b_dec
    norms = w["W_dec"].norm(dim=1)
    acts = topk_dense(((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms, k)
    recon = (acts / norms) @ w["W_dec"] + w["b_dec"]
    codes = sae.encode(x)
    assert torch.allclose(dense(codes), acts, atol=1e-5)
    assert torch.allclose(sae.decode(codes), recon, atol=1e-4)
    assert sae.info["layout"] == "saelens" and sae.config.k == k
    assert load_sae(path, k=2).encode(x).indices.shape == (64, 2)


def test_saelens_v5_standard_relu_and_b_dec_not_applied(tmp_path):
    w = weights(1)
    cfg = {"architecture": "standard", "activation_fn_str": "relu", "d_in": D, "d_sae": N,
           "apply_b_dec_to_input": False, "normalize_activations": False, "finetuning_scaling_factor": False,
           "hook_point": "blocks.1.hook_resid_post", "dtype": "torch.float32"}
    files = {"cfg.json": cfg, "sae_weights.safetensors": {**w, "scaling_factor": torch.ones(N)}}
    path = write(tmp_path / "v5", files)
    m, x = user_sae(path), x_batch()
    acts = torch.relu(x @ w["W_enc"] + w["b_enc"])
    assert torch.allclose(dense(m.encode(x)), acts, atol=1e-5)
    assert torch.allclose(m.decode(m.encode(x)), acts @ w["W_dec"] + w["b_dec"], atol=1e-4)


def test_saelens_v5_topk_through_activation_fn_kwargs(tmp_path):
    w = weights(2)
    cfg = {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
           "d_in": D, "d_sae": N}
    sae = load_sae(write(tmp_path / "t5", {"cfg.json": cfg, "sae_weights.safetensors": w}))
    x = x_batch()
    assert torch.allclose(dense(sae.encode(x)), topk_dense((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 3), atol=1e-5)


@pytest.mark.parametrize("change, match", [
    ({"architecture": "jumprelu"}, "jumprelu"),
    ({"architecture": "gated"}, "gated"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations"),
    ({"normalize_activations": "expected_average_only_in"}, "fold"),
    ({"finetuning_scaling_factor": True}, "scaling factor"),
    ({"d_in": D + 1}, "d_in"),
    ({"k": None}, "k"),
])
def test_saelens_files_the_harness_cannot_represent_are_refused(tmp_path, change, match):
    cfg = {"architecture": "topk", "d_in": D, "d_sae": N, "k": 4, **change}
    path = write(tmp_path / "bad", {"cfg.json": cfg, "sae_weights.safetensors": weights()})
    with pytest.raises(ConfigError, match=match):
        load_sae(path)


def test_saelens_extra_tensors_are_refused(tmp_path):
    files = {"cfg.json": {"architecture": "standard", "d_in": D, "d_sae": N},
             "sae_weights.safetensors": {**weights(), "threshold": torch.zeros(N)}}
    with pytest.raises(ConfigError, match="threshold"):
        load_sae(write(tmp_path / "j", files))


# ---------------------------------------------------------------------- sparsify
def test_sparsify_layout_equals_the_documented_computation(tmp_path):
    w = weights(3)
    tensors = {"encoder.weight": w["W_enc"].t().contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": N, "k": 4,
           "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D}
    path = write(tmp_path / "sp", {"cfg.json": cfg, "sae.safetensors": tensors})
    assert detect_layout(path) == "sparsify"
    m, x = user_sae(path), x_batch()
    # sparsify SparseCoder.encode: relu(linear(x - b_dec)), top-k; decode: sum acts * W_dec rows + b_dec
    acts = topk_dense(torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]), 4)
    assert torch.allclose(dense(m.encode(x)), acts, atol=1e-5)
    assert torch.allclose(m.decode(m.encode(x)), acts @ w["W_dec"] + w["b_dec"], atol=1e-4)
    for bad, match in (({"transcode": True}, "transcode"), ({"activation": "groupmax"}, "groupmax"),
                       ({"signed": True}, "signed"), ({"num_latents": N + 1}, "num_latents")):
        write(tmp_path / "sp", {"cfg.json": {**cfg, **bad}})
        with pytest.raises(ConfigError, match=match):
            load_sae(path)
    write(tmp_path / "sp", {"cfg.json": cfg, "sae.safetensors": {**tensors, "W_skip": torch.zeros(D, D)}})
    with pytest.raises(ConfigError, match="W_skip"):
        load_sae(path)


# ---------------------------------------------------------------------- export and detection
@pytest.mark.parametrize("config", [TopKConfig(k=5), ReLUConfig(), ArgmaxConfig(), TopKConfig(k=3, apply_b_dec_to_input=False)])
def test_export_to_saelens_and_load_back_gives_identical_codes_and_reconstructions(tmp_path, config):
    w = weights(4)
    ours = SAE(w["W_enc"].t().contiguous(), w["b_enc"], w["W_dec"], w["b_dec"], config)
    path = save_saelens(ours, tmp_path / "out")
    cfg = json.loads((path / "cfg.json").read_text())
    assert set(cfg) >= {"architecture", "d_in", "d_sae", "apply_b_dec_to_input", "normalize_activations", "metadata"}
    assert sorted(p.name for p in path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    back, x = load_sae(path), x_batch(200)
    a, b = ours.encode(x), back.encode(x)
    assert torch.equal(dense(a), dense(b))
    assert torch.equal(ours.decode(a), back.decode(b))


def test_export_refuses_what_saelens_cannot_express(tmp_path):
    w = weights()
    gsae = SAE(w["W_enc"].t().contiguous(), w["b_enc"], w["W_dec"], w["b_dec"], TopKConfig(k=4, grad_beta=1.0))
    with pytest.raises(ConfigError, match="grad_beta=0.0"):
        save_saelens(gsae, tmp_path / "g")
    save_saelens(gsae.replace(grad_beta=0.0), tmp_path / "g")


def test_a_directory_of_no_known_layout_names_the_expected_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        user_sae(tmp_path / "empty")
    for name in ("sae.safetensors", "sae.json", "sae_weights.safetensors", "cfg.json", "saelens", "sparsify"):
        assert name in str(err.value)
    write(tmp_path / "run" / "layers.3", {"cfg.json": {"d_in": D, "k": 2}})
    with pytest.raises(ConfigError, match="layers.3"):
        load_sae(tmp_path / "run")
    with pytest.raises(ConfigError, match="does not exist"):
        load_sae(tmp_path / "missing")


# ---------------------------------------------------------------------- the real packages, where installed
def test_sae_lens_saves_and_the_harness_loads(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install sae-lens)")
    from sae_lens import TopKSAE, TopKSAEConfig

    sae = TopKSAE(TopKSAEConfig(d_in=D, d_sae=N, k=4, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        for name, t in weights(5).items():
            getattr(sae, name).copy_(t)
    sae.save_model(tmp_path / "real")
    x = x_batch()
    ours = load_sae(tmp_path / "real")
    assert torch.allclose(dense(ours.encode(x)), sae.encode(x), atol=1e-5), sae_lens.__version__
    assert torch.allclose(ours.decode(ours.encode(x)), sae.decode(sae.encode(x)), atol=1e-4)


def test_sparsify_saves_and_the_harness_loads(tmp_path):
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify is not installed (pip install eai-sparsify)")

    coder_cls = getattr(sparsify, "SparseCoder", None) or getattr(sparsify, "Sae")
    config_cls = getattr(sparsify, "SparseCoderConfig", None) or getattr(sparsify, "SaeConfig")
    coder = coder_cls(D, config_cls(num_latents=N, k=4))
    with torch.no_grad():
        coder.encoder.bias.normal_()
    coder.save_to_disk(tmp_path / "real")
    x = x_batch()
    ours = load_sae(tmp_path / "real")
    top_acts, top_indices = coder.encode(x)[:2]
    theirs = torch.zeros(x.shape[0], N).scatter(1, top_indices, top_acts)
    assert torch.allclose(dense(ours.encode(x)), theirs, atol=1e-5)
    assert torch.allclose(ours.decode(ours.encode(x)), coder.decode(top_acts, top_indices), atol=1e-4)
