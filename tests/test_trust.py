"""Records you can trust (issue 14): a cell's identity covers every input, nothing a method does ends the run,
names stay inside the results directory, and bad input is one line before any work.

Each test here is a regression test of one case the issue measured on main; README "Guarantees" names them.
"""

from __future__ import annotations

import sys

import pytest

from harness.core import registry
from harness.core.records import Store
from harness.core.runner import run

import trust_plugin  # noqa: F401  (the misbehaving toy methods)
from toy_plugin import toy_spec


def _by_method(summary) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in summary.records:
        out.setdefault(r["method"] if not r["method_params"] else f"{r['method']}{r['method_params']}", []).append(r)
    return out


# ------------------------------------------------------------ nothing a method does ends the run
def test_sys_exit_in_a_method_is_an_error_record_and_the_run_goes_on(results_dir):
    summary = run(toy_spec(results_dir, ["trust-misbehave", "toy-good"], seeds=[0, 1], grid={"how": ["exit", "base"]}))
    errors = [r for r in summary.records if r["method"] == "trust-misbehave"]
    assert [r["status"] for r in errors] == ["error"] * 4
    assert sum(r["error"].startswith("SystemExit: the cell called sys.exit(3)") for r in errors) == 2
    assert sum(r["error"].startswith("_Custom: not an Exception") for r in errors) == 2
    assert [r["status"] for r in summary.records if r["method"] == "toy-good"] == ["ok", "ok"]
    assert len(Store(results_dir).paths()) == 6


def test_isolate_turns_os_exit_into_an_error_record(results_dir):
    spec = toy_spec(results_dir, ["trust-misbehave", "toy-good"], seeds=[0, 1], grid={"how": ["os_exit"]},
                    isolate=True, plugins=("trust_plugin",), threads_per_cell=1)
    summary = run(spec)
    died = [r for r in summary.records if r["method"] == "trust-misbehave"]
    assert [r["status"] for r in died] == ["error", "error"]
    assert all("WorkerDied" in r["error"] and "exited with code 7" in r["error"] for r in died)
    assert [r["status"] for r in summary.records if r["method"] == "toy-good"] == ["ok", "ok"]
    assert {r["provenance"]["execution"]["executor"] for r in summary.records} == {"local:1"}


def test_cell_timeout_stops_the_cell_and_records_why(results_dir):
    spec = toy_spec(results_dir, ["trust-misbehave", "toy-good"], seeds=[0], grid={"how": ["sleep"], "seconds": [60]},
                    cell_timeout=3, plugins=("trust_plugin",), threads_per_cell=1)
    import time

    t0 = time.monotonic()
    summary = run(spec)
    assert time.monotonic() - t0 < 50
    slow = [r for r in summary.records if r["method"] == "trust-misbehave"]
    assert len(slow) == 1 and slow[0]["status"] == "error"
    assert slow[0]["error"].startswith("CellTimeout: the cell ran past --cell-timeout 3 s")
    assert [r["status"] for r in summary.records if r["method"] == "toy-good"] == ["ok"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is measured against /proc")
def test_cell_memory_limit_records_an_error_with_the_reason(results_dir):
    spec = toy_spec(results_dir, ["trust-misbehave"], seeds=[0], grid={"how": ["alloc"], "gb": [3.0, 0.01]},
                    cell_memory_gb=1.0, plugins=("trust_plugin",), threads_per_cell=1)
    summary = run(spec)
    by_gb = {r["method_params"]["gb"]: r for r in summary.records}
    assert by_gb[3.0]["status"] == "error"
    assert by_gb[3.0]["error"].startswith("CellMemoryLimit: the cell exceeded --cell-memory 1 GB")
    assert by_gb[0.01]["status"] == "ok"


# ------------------------------------------------------------ a cell's identity covers every input
def _cells(**kw):
    from harness.core.cell import RunSpec, expand

    return expand(RunSpec(**{"seeds": [0], "progress": False, **kw}))


def test_default_cells_keep_their_identity():
    """Counting external inputs changed no built-in cell (an invariant, so it passes on main too): keys computed
    on main before inputs existed, and every entry of the committed reference (task-config and method-config
    hashes) is still a cell of the suite."""
    import json
    from pathlib import Path

    from harness.core.records import config_hash

    registry.load_all()
    keys = {c.label: c.identity.key for c in _cells(seeds=[0, 1])}
    assert keys["clustering/wine | kmeans-raw | seed 0"] == "8d9dd85c24d2a81e1697"
    assert keys["circuits/ioi | eap | seed 0"] == "7688a62fcd93ca68e5c9"
    # task version 2 (sparse-probe metrics added) changed this key on purpose; it was 3bb9ff0aad761a68d6ed at v1
    assert keys["reconstruction/embedded-resid | topk-sae | seed 1"] == "5174348fb0f64b4ff505"
    builtin = [c for c in _cells() if c.task_entry.source == c.method_entry.source == "builtin"]
    assert builtin and all("inputs" not in c.identity.config and not getattr(c.identity, "inputs", None)
                           for c in builtin)
    ref = json.loads((Path(__file__).resolve().parents[1] / "results" / "reference.json").read_text())
    have = {(c.task_entry.name, c.task_entry.version, c.identity.task_config_hash, c.method_entry.name,
             config_hash(c.identity.config["method"])) for c in builtin}
    wanted = {(e["task"], e["task_version"], e["task_config_hash"], e["method"], e["method_config_hash"])
              for e in ref["entries"]}
    assert wanted and wanted <= have


def _ioi(results_dir, **overrides):
    from harness.core.cell import RunSpec

    return RunSpec(tasks=["circuits/ioi"], methods=["eap"], seeds=[0], results_dir=results_dir, device="cpu",
                   progress=False, task_overrides={"n_fit": 8, "n_eval": 16, **overrides})


def test_editing_the_ground_truth_file_reruns_the_cell(results_dir, tmp_path):
    import hashlib
    import json

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps([[0, 1], [1, 0]]))
    first = run(_ioi(results_dir, ground_truth=str(gt)))
    gt.write_text(json.dumps([[0, 1], [2, 0], [1, 2]]))  # edited in place: same path, new content
    second = run(_ioi(results_dir, ground_truth=str(gt)))
    assert first.ran == 1 and second.ran == 1 and second.skipped == 0
    a, b = first.records[0], second.records[0]
    assert a["cell_key"] != b["cell_key"] and a["metrics"] != b["metrics"]
    assert b["provenance"]["inputs"]["task"]["ground_truth"] == {
        "path": str(gt.resolve()), "sha256": hashlib.sha256(gt.read_bytes()).hexdigest()}
    assert b["config"]["inputs"] == {"task": {"ground_truth": hashlib.sha256(gt.read_bytes()).hexdigest()[:16]}}
    assert run(_ioi(results_dir, ground_truth=str(gt))).skipped == 1  # same bytes: the same experiment


def test_replacing_the_model_weights_reruns_the_cell(results_dir, tmp_path):
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    import harness.embedded

    model = tmp_path / "model"
    shutil.copytree(Path(harness.embedded.__file__).parent / "weights" / "planted-ioi", model)
    first = run(_ioi(results_dir, model=str(model)))
    tensors = load_file(model / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 0.5
    save_file(tensors, str(model / "model.safetensors"))
    second = run(_ioi(results_dir, model=str(model)))
    assert first.ran == 1 and second.ran == 1, "a replaced model kept its old numbers"
    assert first.records[0]["cell_key"] != second.records[0]["cell_key"]
    assert set(second.records[0]["provenance"]["inputs"]["task"]) == {"model"}


def test_user_sae_and_plugin_source_and_data_file_join_the_identity(tmp_path, monkeypatch):
    plugin = tmp_path / "trust_data_plugin.py"
    plugin.write_text(
        "from dataclasses import dataclass\n"
        "from harness.core.registry import register_task\n"
        "from harness.core.task import MetricSpec, Task\n"
        "@dataclass(frozen=True)\n"
        "class Cfg:\n"
        "    data: str = ''\n"
        "@register_task('toy/trust-data', family='toy', version='1', description='reads a data file')\n"
        "class DataTask(Task):\n"
        "    metrics = (MetricSpec('err', False, 'error'),)\n"
        "    main_metric = 'err'\n"
        "    Config = Cfg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.load_plugin_module("trust_data_plugin")
    data = tmp_path / "data.csv"
    data.write_text("1,2\n")
    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "sae.json").write_text("{}")
    try:
        def keys():
            cells = _cells(tasks=["toy/trust-data", "reconstruction/embedded-resid"], methods=["toy-zero", "user-sae"],
                           task_overrides={"data": str(data)}, grid={"path": [str(sae)]})
            return {c.label.split(" | ")[0]: c.identity for c in cells}

        before = keys()
        assert set(before["toy/trust-data"].inputs["task"]) == {"data", "plugin:trust_data_plugin"}
        assert set(before["reconstruction/embedded-resid"].inputs) == {"method"}
        data.write_text("1,3\n")
        (sae / "sae.json").write_text('{"k": 4}')
        after = keys()
        assert all(before[t].key != after[t].key for t in before)
        plugin.write_text(plugin.read_text() + "# edited\n")
        assert keys()["toy/trust-data"].key != after["toy/trust-data"].key
    finally:
        registry.unregister("toy/trust-data")


def test_a_parameter_at_its_default_is_the_plain_method(results_dir):
    from harness.core.cell import RunSpec
    from harness.report.leaderboard import build_tables

    def spec(**grid):
        return RunSpec(tasks=["clustering/wine"], methods=["kmeans-raw"], seeds=[0], grid=grid,
                       results_dir=results_dir, device="cpu", progress=False)

    first = run(spec(n_init=[10, 3]))
    assert [r["method_params"] for r in first.records] == [{}, {"n_init": 3}]
    assert run(spec()).skipped == 1
    rows = [row for table in build_tables(Store(results_dir).load_all()) for row in table.rows]
    assert len(rows) == 2


# ------------------------------------------------------------ names stay inside the results directory
@pytest.mark.parametrize("name", ["..", "../up", "a/../b", "x/y", "/abs", "a b", "a\\\\b", ".hidden", "", "ok/../.."])
def test_unsafe_method_names_are_refused_at_registration(name):
    from harness.core.method import Method
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="invalid method name"):
        registry.register_method(name, family="toy", version="1", description="x")(type("M", (Method,), {}))
    assert name not in {m.name for m in registry.methods()}


@pytest.mark.parametrize("name", ["..", "toy/..", "toy/../x", "a/b/c", "toy/", "/toy", "toy/a b"])
def test_unsafe_task_names_are_refused_at_registration(name):
    from toy_plugin import ToyTask

    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="invalid task name"):
        registry.add_task(name, ToyTask, version="1", description="x", family="toy")
    assert name not in {t.name for t in registry.tasks()}


def test_record_paths_stay_inside_the_results_directory(results_dir):
    from harness.core.records import record_path
    from harness.errors import RecordError

    assert record_path(results_dir, "circuits/ioi", "eap", 0, "abc").parent == results_dir / "records" / "circuits_ioi" / "eap"
    for task, method, key in [("..", "eap", "k"), ("t", "..", "k"), ("t", "m", "../../../x")]:
        with pytest.raises(RecordError, match="outside"):
            record_path(results_dir, task, method, 0, key)


# ------------------------------------------------------------ bad input: one line, exit 2, before any work
def _cli(capsys, *argv):
    from harness.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(capsys, *argv, match: str):
    code, out, err = _cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error:") and match in lines[0], err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("kind", ["file", "records-file"])
def test_results_dir_that_cannot_hold_records_is_one_line_before_any_work(capsys, tmp_path, kind):
    target = tmp_path / "results"
    if kind == "file":
        target.write_text("not a directory")
    else:
        target.mkdir()
        (target / "records").write_text("in the way")
    _one_line_error(capsys, "run", "--tasks", "clustering/wine", "--methods", "kmeans-raw", "--seeds", "0",
                    "--no-progress", "--results-dir", str(target), match="is a file")


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_results_dir_is_one_line_before_any_work(capsys, tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    target.chmod(0o555)
    try:
        _one_line_error(capsys, "run", "--tasks", "clustering/wine", "--methods", "kmeans-raw", "--seeds", "0",
                        "--no-progress", "--results-dir", str(target), match="not writable")
    finally:
        target.chmod(0o755)


@pytest.mark.parametrize("argv, match", [
    (["--seeds", "-1"], "seed -1 is not an integer from 0"),
    (["--set", "height=abc"], "config key 'height' must be an integer"),
    (["--grid", "n_init=abc"], "parameter 'n_init' must be"),
    (["--grid", "n_init=1.5"], "parameter 'n_init' must be"),
])
def test_bad_values_are_one_line_naming_the_key(capsys, tmp_path, argv, match):
    _one_line_error(capsys, "run", "--tasks", "clustering/multispectral", "--methods", "kmeans-raw", "--no-progress",
                    "--results-dir", str(tmp_path / "r"), *argv, match=match)
    assert not (tmp_path / "r" / "records").exists() or not list((tmp_path / "r" / "records").rglob("*.json"))


@pytest.mark.parametrize("case, match", [
    ("missing-model", "does not exist"),
    ("bad-json", "cannot read ground-truth file"),
    ("out-of-range", "outside the model"),
    ("every-head", "lists every head"),
])
def test_model_and_ground_truth_are_checked_before_any_work(capsys, tmp_path, case, match):
    gt = tmp_path / "gt.json"
    gt.write_text({"bad-json": "[[0, 1", "out-of-range": "[[0, 1], [40, 0]]"}.get(case, "[[0, 1]]"))
    argv = ["run", "--tasks", "circuits/ioi", "--methods", "eap", "--seeds", "0", "--no-progress",
            "--results-dir", str(tmp_path / "r"), "--ground-truth", str(gt)]
    if case == "missing-model":
        argv += ["--model", str(tmp_path / "nonexistent")]
    if case == "every-head":
        from harness.embedded import planted
        from harness.tasks.circuits.task import get_model

        model = get_model("planted-ioi", "cpu", tmp_path / "cache" / "models")
        gt.write_text(str([[layer, h] for layer in range(model.n_layers) for h in range(model.n_heads)]))
        assert planted.PLANTED
    _one_line_error(capsys, *argv, match=match)
    assert not list((tmp_path / "r").rglob("*.json"))


# ------------------------------------------------------------ malformed records and references name the file
def _toy_results(results_dir):
    assert run(toy_spec(results_dir, ["toy-good", "toy-zero"], seeds=[0, 1])).ok
    return sorted(Store(results_dir).paths())


def _rewrite(path, edit):
    import json

    from harness.core.records import config_hash

    record = json.loads(path.read_text())
    edit(record)
    record["config_hash"] = config_hash(record["config"])  # recomputed: the file passes the hash check
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("reader", [["leaderboard"], ["compare", "toy-good", "toy-zero", "--task", "toy/vector"],
                                    ["check", "--reference", "REF"]])
@pytest.mark.parametrize("fault, match", [
    (lambda r: r["config"].pop("task"), "field 'config' lacks the object 'task'"),
    (lambda r: r["metrics"].update(err=10**400), "metric 'err' is 1000"),
    (lambda r: r["provenance"].pop("timestamp"), "provenance.timestamp"),
])
def test_a_malformed_record_names_the_file_and_field_and_can_be_skipped(capsys, results_dir, tmp_path, reader,
                                                                        fault, match):
    paths = _toy_results(results_dir)
    ref = tmp_path / "ref.json"
    assert _cli(capsys, "reference", "--out", str(ref), "--results-dir", str(results_dir))[0] == 0
    _rewrite(paths[0], fault)
    argv = [a if a != "REF" else str(ref) for a in reader] + ["--results-dir", str(results_dir)]
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and str(paths[0]) in err and match in err, err
    code, out, err = _cli(capsys, *argv, "--skip-bad-records")
    assert "Traceback" not in err and "skipped 1 bad record file(s)" in err and str(paths[0]) in err
    if reader[0] != "check":  # check then reports the seed it lacks as missing (exit 1)
        assert code == 0, err
    else:
        assert code == 1 and "missing" in out


def test_readers_on_a_file_or_missing_results_dir_are_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, "leaderboard", "--results-dir", str(tmp_path / "file"), match="not a directory")
    _one_line_error(capsys, "leaderboard", "--results-dir", str(tmp_path / "missing"), match="does not exist")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("edit, match", [
    (lambda doc: doc.update(entries=[None]), "entry 0 is null, expected an object"),
    (lambda doc: doc["entries"][0].update(seeds="0"), "field 'seeds' is str"),
    (lambda doc: doc["entries"][0]["metrics"]["err"].update(value=10**400), "no finite numeric value"),
    (lambda doc: doc.update(entries={}), "field 'entries' must be a list"),
])
def test_a_malformed_reference_names_the_file_and_field(capsys, results_dir, tmp_path, edit, match):
    import json

    _toy_results(results_dir)
    ref = tmp_path / "ref.json"
    _cli(capsys, "reference", "--out", str(ref), "--results-dir", str(results_dir))
    doc = json.loads(ref.read_text())
    edit(doc)
    ref.write_text(json.dumps(doc))
    _one_line_error(capsys, "check", "--reference", str(ref), "--results-dir", str(results_dir), match=match)


def test_check_fails_on_an_empty_reference_and_names_removed_tasks(capsys, results_dir, tmp_path):
    import json

    _toy_results(results_dir)
    ref = tmp_path / "ref.json"
    _cli(capsys, "reference", "--out", str(ref), "--results-dir", str(results_dir))
    doc = json.loads(ref.read_text())
    empty = dict(doc, entries=[])
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    code, out, _ = _cli(capsys, "check", "--reference", str(tmp_path / "empty.json"), "--results-dir", str(results_dir))
    assert code == 1 and "no entries" in out
    doc["entries"][0]["task"] = "toy/retired"
    ref.write_text(json.dumps(doc))
    code, out, _ = _cli(capsys, "check", "--reference", str(ref), "--results-dir", str(results_dir))
    assert code == 1 and "removed" in out and "task 'toy/retired' no longer exists" in out


# ------------------------------------------------------------ --plugin after the subcommand; safetensors only
def test_plugin_is_accepted_after_every_subcommand(capsys, tmp_path, monkeypatch):
    plugin = tmp_path / "trust_cli_plugin.py"
    plugin.write_text("from harness.core.registry import register_method\n"
                      "from harness.core.method import Method\n"
                      "@register_method('trust-cli-method', family='toy', version='1', description='x')\n"
                      "class M(Method):\n"
                      "    def predict(self, x):\n"
                      "        return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    results = tmp_path / "r"
    try:
        code, out, err = _cli(capsys, "run", "--plugin", "trust_cli_plugin", "--tasks", "toy/vector", "--methods",
                              "trust-cli-method", "--seeds", "0", "--no-progress", "--results-dir", str(results))
        assert code == 0, err
        code, out, _ = _cli(capsys, "list", "--plugin", "trust_cli_plugin", "--family", "toy")
        assert code == 0 and "trust-cli-method" in out
        for argv in (["leaderboard"], ["reference", "--out", str(tmp_path / "ref.json")]):
            assert _cli(capsys, *argv, "--plugin", "trust_cli_plugin", "--results-dir", str(results))[0] == 0
        code, _, err = _cli(capsys, "leaderboard", "--plugin", "no_such_plugin_module", "--results-dir", str(results))
        assert code == 2 and "cannot import plugin module 'no_such_plugin_module'" in err
    finally:
        registry.unregister("trust-cli-method")


def test_pickle_only_model_weights_need_allow_pickle_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from harness.errors import HarnessError
    from harness.models.loading import load_model

    words = ["[UNK]", "the", "a", "b"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    config = transformers.GPT2Config(vocab_size=len(words), n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "m")
    fast.save_pretrained(tmp_path / "m")
    import torch

    (tmp_path / "m" / "model.safetensors").unlink()  # a checkpoint that has only a pickle file
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    assert (tmp_path / "m" / "pytorch_model.bin").exists() and not list((tmp_path / "m").glob("*.safetensors"))
    with pytest.raises(HarnessError, match="only as pickle files.*--allow-pickle-weights"):
        load_model(str(tmp_path / "m"))
    assert load_model(str(tmp_path / "m"), allow_pickle_weights=True).n_layers == 1
    # from the command line: refused before any work, and the flag reaches the loader
    gt = tmp_path / "gt.json"
    gt.write_text("[[0, 1]]")
    argv = ["run", "--tasks", "circuits/ioi", "--methods", "random", "--seeds", "0", "--model", str(tmp_path / "m"),
            "--ground-truth", str(gt), "--no-progress", "--results-dir", str(tmp_path / "r")]
    from harness.cli import main

    assert main(argv) == 2
    assert main(argv + ["--allow-pickle-weights"]) == 1  # loads; the 4-word vocabulary cannot build IOI prompts
    assert len(Store(tmp_path / "r").load_all(("error",))) == 1


def test_sys_exit_from_the_command_line_is_a_failed_cell_not_the_end_of_the_run(capsys, tmp_path):
    code, out, err = _cli(capsys, "run", "--plugin", "trust_plugin", "--tasks", "toy/vector", "--methods",
                          "trust-misbehave", "toy-good", "--seeds", "0", "1", "--no-progress", "--device", "cpu",
                          "--results-dir", str(tmp_path / "r"))
    assert code == 1
    assert "4 cells: 4 run, 0 already recorded, 2 failed" in out
    assert "FAILED toy/vector | trust-misbehave | seed 1: SystemExit: the cell called sys.exit(3)" in out


def test_stale_temporary_record_files_are_removed_at_the_next_run(results_dir):
    import os
    import time

    stale = results_dir / "records" / "toy_vector" / "toy-good" / ".tmp-abandoned.json"
    fresh = stale.with_name(".tmp-being-written.json")
    stale.parent.mkdir(parents=True)
    stale.write_text("{")
    fresh.write_text("{")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert run(toy_spec(results_dir, ["toy-good"], seeds=[0])).ok
    assert not stale.exists() and fresh.exists()  # another run may be writing the fresh one


def test_large_input_hashes_are_remembered_across_processes_and_follow_edits(tmp_path, monkeypatch):
    import hashlib

    from harness.core import inputs

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(inputs, "DISK_MEMO_BYTES", 10)
    monkeypatch.setattr(inputs, "_MEMO", {})
    big = tmp_path / "weights.bin"
    big.write_bytes(b"0123456789" * 5)
    assert inputs.content_hash(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    assert len(list((tmp_path / "cache" / "input-hashes").glob("*.sha256"))) == 1
    monkeypatch.setattr(inputs, "_MEMO", {})  # a new process: read back from the memo
    original = inputs._file_sha256
    monkeypatch.setattr(inputs, "_file_sha256", lambda p: pytest.fail("hashed again"))
    assert inputs.content_hash(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    monkeypatch.setattr(inputs, "_file_sha256", original)
    big.write_bytes(b"9876543210" * 5)  # same size, edited in place
    assert inputs.content_hash(big) == hashlib.sha256(big.read_bytes()).hexdigest()
