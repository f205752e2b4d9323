"""The ``harness`` command line.

Exit status: 0 success; 1 a cell failed or ``check`` found a regression;
2 bad input (unknown name, bad config, unreadable file) with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from harness.core import registry
from harness.errors import HarnessError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _parse_value(text: str) -> Any:
    """``16`` -> 16, ``0.5`` -> 0.5, ``true`` -> True, ``[1,2]`` -> list; otherwise the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_assignments(items: Sequence[str], flag: str, multi: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise HarnessError(f"{flag} expects NAME=VALUE{',VALUE...' if multi else ''}, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if multi:
            out[key] = [_parse_value(v) for v in value.split(",") if v != ""]
            if not out[key]:
                raise HarnessError(f"{flag} {key}= has no values")
        else:
            out[key] = _parse_value(value)
    return out


def _add_results_dir(p: argparse.ArgumentParser, reader: bool = False) -> None:
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="directory holding records/ and LEADERBOARD.md (default: ./results)")
    if reader:
        p.add_argument("--skip-bad-records", action="store_true",
                       help="list record files that are corrupt or invalid and go on without them (default: refuse)")


def _add_plugin(p: argparse.ArgumentParser) -> None:
    """``--plugin`` after the subcommand too (``harness run --plugin X``), merged with the top-level one."""
    p.add_argument("--plugin", dest="sub_plugins", action="append", metavar="MODULE",
                   help="import this module first (registers its tasks/methods); repeatable")
    for action in p._subparsers._group_actions if p._subparsers else ():
        for sub in action.choices.values():
            _add_plugin(sub)


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run tasks x methods x seeds (no arguments: the default suite)")
    p.add_argument("--tasks", nargs="+", help="task names (default: every registered task)")
    p.add_argument("--methods", nargs="+", help="method names (default: every method of each task's family)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the suite's, 0 1 2)")
    p.add_argument("--suite", choices=["default", "quick"], default="default",
                   help="default: seeds 0 1 2; quick: seed 0 (what CI checks against the reference)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a task config value (repeatable)")
    p.add_argument("--grid", action="append", default=[], metavar="PARAM=V1,V2",
                   help="method parameter grid; each point is a separate cell (repeatable)")
    p.add_argument("--model", help="model for tasks that read one (e.g. gpt2 or a local directory)")
    p.add_argument("--ground-truth", type=Path, metavar="FILE",
                   help="circuits: JSON list of [layer, head] pairs, the circuit of a model you bring")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--cache-dir", type=Path, help="cache for built models and data (default: $HARNESS_CACHE or ~/.cache/interp-harness)")
    p.add_argument("--force", action="store_true", help="re-run cells that already have a record")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--jobs", default="1", metavar="N|auto",
                   help="run cells in N worker processes on this machine (auto: one per free core; default 1)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this machine (serial or --jobs); ray: each group of cells a Ray task (pip install "
                        "'interp-harness[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join this Ray cluster ('auto' or HOST:PORT; default: start a local one bound to 127.0.0.1)")
    p.add_argument("--threads-per-cell", type=int, metavar="N",
                   help="threads each cell may use in torch, OpenMP and BLAS (default: the free cores shared out "
                        "among the cells running at once)")
    p.add_argument("--isolate", action="store_true",
                   help="run each cell in a worker process even without --jobs (a method that kills its process "
                        "costs its own cell only)")
    p.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                   help="stop a cell that runs longer and record it as an error (implies --isolate)")
    p.add_argument("--cell-memory", type=float, metavar="GB",
                   help="address space a cell's worker may add over its size at rest; beyond it the cell is an "
                        "error (RLIMIT_AS; CPU runs; implies --isolate)")
    p.add_argument("--allow-pickle-weights", action="store_true",
                   help="load a model directory's pickle weights (pytorch_model.bin, with weights_only=True) when "
                        "it has no safetensors (default: safetensors only)")
    _add_results_dir(p)


def _add_readers(sub: Any) -> None:
    p = sub.add_parser("list", help="list registered tasks and methods")
    p.add_argument("--family")

    p = sub.add_parser("leaderboard", help="print per-task tables ranked by the main metric")
    p.add_argument("--format", choices=["md", "csv", "html"], default="md",
                   help="md: print and write LEADERBOARD.md; csv: every metric; html: one self-contained page "
                        "(tables, embedded plots, asv history) written to <results-dir>/leaderboard.html")
    p.add_argument("--out", type=Path,
                   help="file to write (default: <results-dir>/LEADERBOARD.md, leaderboard.csv or leaderboard.html)")
    p.add_argument("--asv-results", type=Path, default=None, metavar="DIR",
                   help="html: asv results directory whose track_* benchmarks are charted "
                        "(default: results/asv/results)")
    _add_results_dir(p, reader=True)

    p = sub.add_parser("compare", help="paired difference of two methods over shared seeds")
    p.add_argument("method_a")
    p.add_argument("method_b")
    p.add_argument("--task", required=True)
    p.add_argument("--metric", help="metric to compare (default: the task's main metric)")
    _add_results_dir(p, reader=True)

    p = sub.add_parser("check", help="compare current results with a committed reference")
    p.add_argument("--reference", type=Path, default=Path("results/reference.json"))
    _add_results_dir(p, reader=True)

    p = sub.add_parser("reference", help="write a reference file from the current results")
    p.add_argument("--out", type=Path, default=Path("results/reference.json"))
    p.add_argument("--tasks", nargs="+", help="only these tasks")
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds (the quick suite's reference: --seeds 0)")
    p.add_argument("--suite", choices=["default", "quick"],
                   help="only the cells of this suite (what CI's check expects: --suite quick); results of tasks "
                        "outside it, or of other seeds, configs and grid points, are left out")
    _add_results_dir(p, reader=True)


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="the embedded models the harness trains itself")
    msub = p.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="list the embedded models and their families")
    pb = msub.add_parser("build", help="(re)train embedded models deterministically")
    pb.add_argument("--name", nargs="+", help="only these models (default: all)")
    pb.add_argument("--out", type=Path, help="directory to write to (default: each family's committed directory)")
    pb.add_argument("--force", action="store_true", help="rebuild even if present")
    pc = msub.add_parser("check", help="rebuild into a temporary directory and compare with the committed models")
    pc.add_argument("--name", nargs="+", help="only these models (default: all)")


def _add_selftest(sub: Any) -> None:
    p = sub.add_parser("selftest", help="run every task x method once on tiny settings (about a minute): "
                                        "what to run first on a new machine or device")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--tasks", nargs="+", help="only these tasks (default: the default suite's)")
    p.add_argument("--methods", nargs="+", help="only these methods (default: every method of each task's family)")
    p.add_argument("--cache-dir", type=Path, help="cache for built models and data (default: as harness run)")


def _add_speed(sub: Any) -> None:
    p = sub.add_parser("speed", help="speed gate: time the key kernels under a base and a head commit in one "
                                     "run; fail only on a slowdown beyond --factor with significance")
    p.add_argument("--base", required=True, help="git revision (or directory) to compare against, e.g. HEAD~1")
    p.add_argument("--head", help="git revision or directory under test (default: the working tree)")
    p.add_argument("--kernels", nargs="+", help="only these kernels (default: all in the kernels file)")
    p.add_argument("--kernels-file", type=Path, help="kernel definitions (default: <head>/benchmarks/kernels.py)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds per kernel (samples per side)")
    p.add_argument("--repeat", type=int, default=3, help="timings per sample (the sample is their minimum)")
    p.add_argument("--sample-seconds", type=float, default=0.05, help="target seconds per timing")
    p.add_argument("--factor", type=float, default=1.2, help="flag only when head/base >= this ratio of medians")
    p.add_argument("--alpha", type=float, default=0.01, help="and the one-sided Mann-Whitney p-value is below this")
    p.add_argument("--no-confirm", action="store_true",
                   help="flag on the first measurement (default: a flagged kernel is measured again and must "
                        "be judged slower twice)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--repo", type=Path, default=Path("."), help="git repository (default: current directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import this module before running (registers its tasks/methods); repeatable")
    sub = parser.add_subparsers(dest="command")
    for add in (_add_run, _add_readers, _add_models, _add_selftest, _add_speed):
        add(sub)
    for p in sub.choices.values():
        _add_plugin(p)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from harness.report.leaderboard import build_tables, render_markdown
    from harness.core.cell import SUITES, RunSpec
    from harness.core.runner import run

    overrides = _parse_assignments(args.overrides, "--set", multi=False)
    if args.model:
        overrides["model"] = args.model
    if args.ground_truth:
        if not args.ground_truth.is_file():
            raise HarnessError(f"--ground-truth {args.ground_truth}: no such file")
        overrides["ground_truth"] = str(args.ground_truth.resolve())
    if args.executor == "ray":
        from harness.core.ray_executor import import_ray

        import_ray(local=args.ray_address is None)  # the install command now, before any work
    spec = RunSpec(
        tasks=args.tasks, methods=args.methods,
        seeds=args.seeds if args.seeds else SUITES[args.suite],
        task_overrides=overrides, grid=_parse_assignments(args.grid, "--grid", multi=True),
        device=args.device, results_dir=args.results_dir, cache_dir=args.cache_dir,
        force=args.force, progress=not args.no_progress, jobs=_jobs(args.jobs),
        threads_per_cell=_positive(args.threads_per_cell, "--threads-per-cell"), plugins=tuple(args.plugin),
        executor=args.executor, ray_address=args.ray_address, isolate=args.isolate,
        cell_timeout=_positive(args.cell_timeout, "--cell-timeout"), cell_memory_gb=_positive(args.cell_memory, "--cell-memory"),
        allow_pickle_weights=args.allow_pickle_weights,
    )
    try:
        # the leaderboard and its plots are drawn before the run's worker processes stop, by them
        summary = run(spec, after_cells=lambda map_calls: _write_leaderboard_and_plots(args.results_dir,
                                                                                      map_calls=map_calls))
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are saved; run the same command again to do the rest",
              file=sys.stderr)
        return 130
    ok = [r for r in summary.records if r["status"] == "ok"]
    print(render_markdown(build_tables(ok)))
    path = summary.after_cells
    print(f"{len(summary.records)} cells: {summary.ran} run, {summary.skipped} already recorded, "
          f"{len(summary.failed)} failed. Records in {args.results_dir / 'records'}; leaderboard in {path}")
    from harness.core.records import method_label

    for r in summary.failed:
        print(f"  FAILED {r['task']} | {method_label(r['method'], r['method_params'])} | seed {r['seed']}: "
              f"{r['error'].splitlines()[0]}")
    return EXIT_FAIL if summary.failed else EXIT_OK


def _jobs(value: str) -> int | str:
    """``--jobs``: ``auto`` or a positive integer (a usage error otherwise, before any work)."""
    from harness.core.threads import resolve_jobs

    try:
        resolve_jobs(value if value == "auto" else value)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None
    return value if value == "auto" else int(value)


def _positive(value: float | None, flag: str) -> float | None:
    import math

    if value is not None and (not math.isfinite(value) or value <= 0 or (isinstance(value, int) and value < 1)):
        raise HarnessError(f"{flag} must be a positive {'integer' if isinstance(value, int) else 'number'}, got {value}")
    return value


def _write_leaderboard_and_plots(results_dir: Path, fmt: str = "md", out: Path | None = None,
                                 asv_results: Path | None = None, records: list | None = None,
                                 tables: list | None = None, map_calls=None) -> Path:
    """LEADERBOARD.md (or csv, or html with the history of ``asv_results``) from every record in
    ``results_dir`` (or the ``records`` / ``tables`` the caller already has), with the families' plots in plots/
    (drawn through ``map_calls``, e.g. a run's worker processes, when given)."""
    from harness.report.leaderboard import build_tables, write_leaderboard
    from harness.report.plots import plot_jobs, render_plots
    from harness.core.records import Store

    if records is None:
        records = Store(results_dir).load_all()
    if tables is None:
        tables = build_tables(records)
    plots = []
    if fmt in ("md", "html"):
        plots = render_plots(plot_jobs(tables, records), results_dir / "plots", map_calls)
    if fmt == "html":
        from harness.report.html import DEFAULT_ASV_RESULTS, read_asv_history, write_html

        asv_results = asv_results or DEFAULT_ASV_RESULTS
        return write_html(out or results_dir / "leaderboard.html", tables, plots, read_asv_history(asv_results),
                          n_records=len(records), history_source=asv_results)
    out = out or results_dir / ("LEADERBOARD.md" if fmt == "md" else "leaderboard.csv")
    return write_leaderboard(tables, out, fmt, plots)


def cmd_list(args: argparse.Namespace) -> int:
    tasks = registry.tasks(args.family)
    print(tabulate([[t.name, t.family, t.version, t.create().main_metric, t.description] for t in tasks],
                   headers=["task", "family", "version", "main metric", "description"], tablefmt="github"))
    print()
    methods = registry.methods(args.family)
    print(tabulate([[m.name, m.family, m.version, "yes" if m.baseline else "", m.source, m.description] for m in methods],
                   headers=["method", "family", "version", "baseline", "source", "description"], tablefmt="github"))
    return EXIT_OK


def _records(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ok records of ``--results-dir`` for a reader; bad files refuse the directory (one line naming the
    file and the field) unless ``--skip-bad-records``, which lists them on stderr and goes on."""
    from harness.core.records import Store
    from harness.errors import RecordError

    store = Store(args.results_dir)
    store.check_readable()
    bad: list[RecordError] = []
    try:
        records = store.load_all(on_bad=bad.append if args.skip_bad_records else None)
    except RecordError as exc:
        raise RecordError(f"{exc} (pass --skip-bad-records to leave such files out and go on)") from None
    if bad:
        print(f"skipped {len(bad)} bad record file(s) (--skip-bad-records):", file=sys.stderr)
        for exc in bad:
            print(f"  {exc}", file=sys.stderr)
    return records


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.report.leaderboard import build_tables, render_csv, render_markdown

    records = _records(args)  # read once: printed and written from the same records
    if args.format == "html":  # the page is the output: print only where it is
        print(_write_leaderboard_and_plots(args.results_dir, "html", args.out, args.asv_results, records))
        return EXIT_OK
    tables = build_tables(records)
    print(render_markdown(tables) if args.format == "md" else render_csv(tables))
    out = _write_leaderboard_and_plots(args.results_dir, args.format, args.out, records=records, tables=tables)
    print(f"written to {out}", file=sys.stderr)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.report.compare import compare

    c = compare(_records(args), args.method_a, args.method_b, args.task, args.metric)
    rows = [[s, a, b, a - b] for s, a, b in zip(c.seeds, c.a, c.b)]
    print(tabulate(rows, headers=["seed", c.method_a, c.method_b, "difference"], tablefmt="github", floatfmt=".4f"))
    print(c.verdict)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from harness.report.check import check, read_reference

    reference = read_reference(args.reference)
    if not reference["entries"]:
        print(f"check FAILED: the reference {args.reference} has no entries, so it checks nothing; build one with "
              "`harness reference`")
        return EXIT_FAIL
    findings = check(_records(args), reference)
    failing = [f for f in findings if f.failing]
    improved = [f for f in findings if f.kind == "improvement"]
    device = [f for f in findings if f.kind == "device"]

    def rows(fs):
        return [[f.kind, f.task, f.method, f.metric, f.reference, f.current, f.tolerance, f.detail] for f in fs]

    headers = ["kind", "task", "method", "metric", "reference", "current", "tolerance", "detail"]
    if device:
        print(f"{len(device)} device difference(s), within the reference's cross-device tolerance (not failing):")
        print(tabulate(rows(device), headers=headers, tablefmt="github", floatfmt=".4f"))
    if improved:
        print(f"{len(improved)} improvement(s) beyond tolerance (update the reference with `harness reference` if intended):")
        print(tabulate(rows(improved), headers=headers, tablefmt="github", floatfmt=".4f"))
    n = len(reference["entries"])
    if failing:
        print(f"check FAILED: {len(failing)} problem(s) against {args.reference} ({n} reference entries):")
        print(tabulate(rows(failing), headers=headers, tablefmt="github", floatfmt=".4f"))
        return EXIT_FAIL
    print(f"check passed: {n} reference entries within tolerance ({args.reference})")
    return EXIT_OK


def cmd_reference(args: argparse.Namespace) -> int:
    from harness.report.check import build_reference, carry_device_tolerance, write_reference

    records = _records(args)
    if args.tasks:
        records = [r for r in records if r["task"] in set(args.tasks)]
    if args.seeds:
        records = [r for r in records if r["seed"] in set(args.seeds)]
    if args.suite:
        from harness.core.cell import SUITES, RunSpec, expand

        registry.load_all()
        keys = {c.identity.key for c in expand(RunSpec(seeds=SUITES[args.suite]))}
        records = [r for r in records if r.get("cell_key") in keys]
    doc = build_reference(records)
    if not doc["entries"]:
        raise HarnessError(f"no results in {args.results_dir} to build a reference from; run `harness run` first")
    note = carry_device_tolerance(doc, args.out) if args.out.exists() else None
    if note:
        print(note)
    write_reference(doc, args.out)
    print(f"wrote {len(doc['entries'])} reference entries to {args.out}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from functools import partial

    from harness.embedded import registry as embedded

    log = partial(print, flush=True)  # progress of builds that take minutes
    if args.models_command == "list":
        rows = [[m.name, m.family, "yes" if m.is_current(m.committed_dir) else "no", m.description]
                for m in embedded.models()]
        print(tabulate(rows, headers=["model", "family", "committed", "description"], tablefmt="github"))
        return EXIT_OK
    if args.models_command == "build":
        for path in embedded.build(args.name, args.out, args.force, log=log):
            print(f"model directory: {path}")
        return EXIT_OK
    ok = embedded.check(args.name, log=log)
    print("models reproduce the committed ones" if ok else "models do NOT reproduce the committed ones")
    return EXIT_OK if ok else EXIT_FAIL


def cmd_selftest(args: argparse.Namespace) -> int:
    from harness.core.selftest import selftest

    t0 = time.perf_counter()
    results = selftest(args.device, args.tasks, args.methods, args.cache_dir, report=lambda r: print(r.line(), flush=True))
    failed = [r for r in results if not r.ok]
    print(f"selftest: {len(results) - len(failed)} of {len(results)} task x method pairs ok on --device {args.device} "
          f"in {time.perf_counter() - t0:.0f} s")
    return EXIT_FAIL if failed else EXIT_OK


def cmd_speed(args: argparse.Namespace) -> int:
    from harness.tracking.speed import compare_speed, render_report, write_report_json

    report = compare_speed(args.base, args.head, args.kernels, args.kernels_file, rounds=args.rounds,
                           repeat=args.repeat, sample_s=args.sample_seconds, factor=args.factor, alpha=args.alpha,
                           repo=args.repo, confirm=not args.no_confirm)
    print(render_report(report))
    if args.json:
        write_report_json(report, args.json)
    return EXIT_OK if report.ok else EXIT_FAIL


COMMANDS = {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard, "compare": cmd_compare, "selftest": cmd_selftest,
            "check": cmd_check, "reference": cmd_reference,
            "models": cmd_models, "speed": cmd_speed}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    args.plugin = list(args.plugin) + list(getattr(args, "sub_plugins", None) or [])
    try:
        for module in args.plugin:
            registry.load_plugin_module(module)
        registry.load_all()
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
