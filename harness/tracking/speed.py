"""Speed gate: time the key kernels under two versions of the code in one run, flag real slowdowns only.

Absolute timings from different runs of a shared machine are noise, so the
gate never compares with stored numbers.  It starts two worker processes,
one on the *base* tree (a git revision, extracted with ``git archive``, or a
directory) and one on the *head* tree (default: the working tree), both
timing the same kernel definitions (the head's ``benchmarks/kernels.py``), and
interleaves them: in each round the two sides run back to back in a random
order, so load on the machine hits both alike.  Per kernel it collects
``rounds`` samples per side (each the minimum of ``repeat`` timings of
``number`` calls, as ``timeit`` advises) and flags a regression only when

- the ratio of medians ``head / base`` is at least ``factor`` (like
  ``asv compare --factor``), **and**
- a one-sided Mann-Whitney U test says head is slower at level ``alpha``,

and (``confirm``, the default) a second, independent set of rounds agrees, each
round of it in a fresh pair of worker processes: a process can carry a bias of
its own for its whole life (memory layout, the core it landed on; CI once saw
identical code 1.22x "slower", twice, in one pair of long-lived workers), so
only samples from independent processes can confirm a slowdown.  When the
base and head trees hold byte-identical ``harness`` sources a difference
cannot come from the change: it is reported and never fails.

Both conditions: the factor keeps small, real-but-irrelevant changes from
failing CI; the test keeps one noisy round from doing so.  Improvements are
reported the same way but never fail.  ``harness speed --help`` for usage.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from harness.errors import ConfigError, HarnessError
from harness.core.io import atomic_write_text
from harness.tracking.speed_worker import load_kernels

WORKER_SOURCE = Path(__file__).with_name("speed_worker.py")
DEFAULT_KERNELS_FILE = Path("benchmarks") / "kernels.py"


@dataclass
class KernelComparison:
    """Samples (seconds per call) of one kernel on both sides and the verdict."""

    kernel: str
    param: Any
    number: int
    base: list[float]
    head: list[float]
    ratio: float = math.nan  # median(head) / median(base): > 1 means head is slower
    p_slower: float = math.nan  # one-sided Mann-Whitney p-value for "head slower than base"
    p_faster: float = math.nan
    verdict: str = ""  # "slower" (fails), "faster", or "same"
    confirmation: dict[str, Any] | None = None  # the second measurement (fresh processes) of a kernel judged slower


@dataclass
class SpeedReport:
    base: str
    head: str
    factor: float
    alpha: float
    rounds: int
    comparisons: list[KernelComparison] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # the head cannot run the kernel: fails
    skipped: dict[str, str] = field(default_factory=dict)  # only the base cannot (e.g. a new kernel): warns
    harness_files: dict[str, str | None] = field(default_factory=dict)  # which harness each side imported
    identical_code: bool = False  # both trees hold the same harness sources: a slowdown is noise, never a failure

    @property
    def regressions(self) -> list[KernelComparison]:
        if self.identical_code:
            return []
        return [c for c in self.comparisons if c.verdict == "slower"]

    @property
    def ok(self) -> bool:
        return not self.regressions and not self.errors


def judge(base: Sequence[float], head: Sequence[float], factor: float, alpha: float) -> tuple[float, float, float, str]:
    """``(ratio, p_slower, p_faster, verdict)`` for two samples of seconds per call.

    ``verdict`` is ``"slower"`` when ``median(head) / median(base) >= factor`` and
    the one-sided Mann-Whitney test of head > base has ``p < alpha``;
    ``"faster"`` symmetrically (ratio <= 1 / factor); ``"same"`` otherwise.
    """
    from scipy.stats import mannwhitneyu

    if len(base) < 2 or len(head) < 2:
        raise ValueError("need at least two samples per side")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    ratio = statistics.median(head) / statistics.median(base)
    p_slower = float(mannwhitneyu(head, base, alternative="greater").pvalue)
    p_faster = float(mannwhitneyu(head, base, alternative="less").pvalue)
    if ratio >= factor and p_slower < alpha:
        verdict = "slower"
    elif ratio <= 1 / factor and p_faster < alpha:
        verdict = "faster"
    else:
        verdict = "same"
    return ratio, p_slower, p_faster, verdict


# ---------------------------------------------------------------- trees and workers
def checkout_tree(rev: str, repo: Path, dest: Path) -> Path:
    """Extract the files of git revision ``rev`` of ``repo`` into ``dest`` (``git archive``; no .git)."""
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                             check=True, capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise ConfigError(f"cannot resolve git revision {rev!r} in {repo}: "
                          f"{getattr(exc, 'stderr', '') or exc}. Pass a commit, branch or tag, or a directory.") from None
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(repo), "archive", "--format=tar", sha], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise HarnessError(f"git archive {sha} failed")
    return dest


def _toplevel(path: Path) -> Path:
    """The root of the git work tree holding ``path`` (``path`` itself outside git, e.g. plain directories)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    except FileNotFoundError:
        return path
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else path


class Worker:
    """One timing process on one tree (see :mod:`harness.tracking.speed_worker` for the protocol)."""

    def __init__(self, name: str, tree: Path, kernels_file: Path, log_dir: Path):
        self.name = name
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the worker puts ``tree`` first on sys.path
        self.log_path = log_dir / f"{name}.stderr.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER_SOURCE.read_text(), str(kernels_file)],
            cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        hello = self._read()
        self.harness_file = hello.get("harness")

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise HarnessError(f"the {self.name} timing worker exited (status {self.proc.returncode}); "
                               f"its stderr: {self.log_path}\n{self.log_path.read_text()[-2000:]}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise HarnessError(f"{self.name} worker: {answer.get('error')}\n{answer.get('traceback', '')}")
        return answer

    def request(self, **req: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


# ---------------------------------------------------------------- the gate
def load_kernel_table(kernels_file: Path) -> dict[str, Any]:
    """The ``KERNELS`` mapping of a kernels file (name -> object with ``gate_param``)."""
    if not kernels_file.is_file():
        raise ConfigError(f"kernels file {kernels_file} not found; pass --kernels-file (default {DEFAULT_KERNELS_FILE} "
                          "under the head tree)")
    return load_kernels(kernels_file, "speed_gate_kernel_table")


def _trees(base: str, head: str | None, repo: Path, tmp: Path) -> dict[str, Path]:
    """The source tree of each side: the working tree (None), a directory, or a git revision checked out."""
    trees = {}
    for side, spec in (("base", base), ("head", head)):
        if spec is None:
            trees[side] = repo
        elif Path(spec).is_dir():
            trees[side] = Path(spec).resolve()
        else:
            trees[side] = checkout_tree(spec, repo, tmp / side)
    return trees


def source_digest(tree: Path, package: str = "harness") -> str | None:
    """SHA-256 over the relative paths and bytes of ``tree/package``'s ``.py`` files (None without the package)."""
    import hashlib

    root = tree / package
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _note(table: dict[str, str], name: str, exc: Exception, what: str, progress: bool) -> None:
    """Record a kernel that could not be compared (``table``: the report's errors or skipped)."""
    table[name] = str(exc)
    if progress:
        print(f"  {name}: {what}: {str(exc).splitlines()[0]}", file=sys.stderr)


@dataclass(frozen=True)
class _Settings:
    rounds: int
    repeat: int
    sample_s: float
    factor: float
    alpha: float
    confirm: bool
    progress: bool


def _compare_kernel(workers: dict, name: str, param: Any, report: SpeedReport, st: _Settings,
                    rng: random.Random, fresh_workers: Callable[[], dict[str, Worker]]) -> None:
    """Set up, time and judge one kernel on both sides; the verdict (or the error) goes into ``report``."""
    try:
        first = {"head": workers["head"].request(op="setup", kernel=name, param=param)["first_call_s"]}
    except HarnessError as exc:
        return _note(report.errors, name, exc, "ERROR on head", st.progress)
    try:
        first["base"] = workers["base"].request(op="setup", kernel=name, param=param)["first_call_s"]
    except HarnessError as exc:
        return _note(report.skipped, name, exc, "skipped, the base cannot run it", st.progress)
    try:
        probe = workers["head"].request(op="time", kernel=name, param=param, number=1, repeat=1)["times"][0]
        number = max(1, math.ceil(st.sample_s / max(probe, 1e-9)))
        comp = _measure(workers, name, param, number, st.rounds, st.repeat, rng, st.factor, st.alpha)
        if comp.verdict == "slower" and st.confirm:
            # a flag must survive a second, independent set of rounds, each in fresh processes: noise, and a
            # bias of one long-lived process, rarely repeat themselves
            again = _measure_fresh(fresh_workers, name, param, number, st.rounds, st.repeat, rng, st.factor,
                                   st.alpha)
            comp.confirmation = {"ratio": again.ratio, "p_slower": again.p_slower, "verdict": again.verdict}
            if again.verdict != "slower":
                comp.verdict = "same"
    except HarnessError as exc:
        return _note(report.errors, name, exc, "ERROR", st.progress)
    report.comparisons.append(comp)
    if st.progress:
        extra = f", confirmation ratio {comp.confirmation['ratio']:.3f}" if comp.confirmation else ""
        print(f"  {name}[{param}]: base {_ms(statistics.median(comp.base))}, head "
              f"{_ms(statistics.median(comp.head))}, ratio {comp.ratio:.3f}, p(slower) {comp.p_slower:.2g}"
              f"{extra} -> {comp.verdict} (first calls {first['base']:.2f} / {first['head']:.2f} s)",
              file=sys.stderr)


def compare_speed(
    base: str,
    head: str | None = None,
    kernels: Sequence[str] | None = None,
    kernels_file: Path | None = None,
    rounds: int = 9,
    repeat: int = 3,
    sample_s: float = 0.05,
    factor: float = 1.2,
    alpha: float = 0.01,
    seed: int = 0,
    repo: Path = Path("."),
    progress: bool = True,
    confirm: bool = True,
) -> SpeedReport:
    """Time ``kernels`` (default: all) under ``base`` and ``head``, interleaved, and judge each.

    ``base`` / ``head``: a git revision of ``repo`` or a directory (``head=None``:
    the working tree ``repo``).  ``sample_s``: target seconds per sample (sets
    ``number``, the calls per timing, from the head's first call; the same on
    both sides).  Each kernel runs at its ``gate_param`` size.  ``confirm``: a
    kernel judged slower is measured again and flagged only if judged slower twice.
    """
    if rounds < 3:
        raise ConfigError("--rounds must be at least 3 (the significance test needs samples)")
    repo = _toplevel(Path(repo).resolve())
    settings = _Settings(rounds, repeat, sample_s, factor, alpha, confirm, progress)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="harness-speed-")))
        trees = _trees(base, head, repo, tmp)
        kfile = Path(kernels_file).resolve() if kernels_file else trees["head"] / DEFAULT_KERNELS_FILE
        table = load_kernel_table(kfile)
        names = list(kernels) if kernels else list(table)
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ConfigError(f"unknown kernel(s) {', '.join(unknown)}; known: {', '.join(table)}")
        report = SpeedReport(base=base, head=head or f"working tree {repo}", factor=factor, alpha=alpha, rounds=rounds)
        workers = {}
        for side in ("base", "head"):
            workers[side] = Worker(side, trees[side], kfile, tmp)
            stack.callback(workers[side].close)
            report.harness_files[side] = workers[side].harness_file
        base_digest = source_digest(trees["base"])  # reads every source file once per side
        report.identical_code = base_digest is not None and base_digest == source_digest(trees["head"])
        rng = random.Random(seed)

        def fresh_workers() -> dict[str, Worker]:
            pair: dict[str, Worker] = {}
            try:
                for side in rng.sample(["base", "head"], 2):  # started in random order
                    pair[side] = Worker(f"{side}-fresh", trees[side], kfile, tmp)
            except BaseException:
                for worker in pair.values():
                    worker.close()
                raise
            return pair

        for name in names:
            _compare_kernel(workers, name, table[name].gate_param, report, settings, rng, fresh_workers)
        return report


def _measure(workers: Mapping[str, Worker], name: str, param: Any, number: int, rounds: int, repeat: int,
             rng: random.Random, factor: float, alpha: float) -> KernelComparison:
    """``rounds`` interleaved samples per side (each the minimum of ``repeat`` timings) and their verdict."""
    samples: dict[str, list[float]] = {"base": [], "head": []}
    for _ in range(rounds):
        order = ["base", "head"]
        rng.shuffle(order)
        for side in order:
            times = workers[side].request(op="time", kernel=name, param=param, number=number, repeat=repeat)["times"]
            samples[side].append(min(times))
    comp = KernelComparison(name, param, number, samples["base"], samples["head"])
    comp.ratio, comp.p_slower, comp.p_faster, comp.verdict = judge(comp.base, comp.head, factor, alpha)
    return comp


def _measure_fresh(fresh_workers: Callable[[], dict[str, Worker]], name: str, param: Any, number: int, rounds: int,
                   repeat: int, rng: random.Random, factor: float, alpha: float) -> KernelComparison:
    """Like :func:`_measure`, but each round's two samples come from a new pair of worker processes.

    Each new worker sets the kernel up and calls it once (the warm-up) before its
    sample is taken, so the samples are as comparable as in :func:`_measure`
    while being independent across processes.
    """
    samples: dict[str, list[float]] = {"base": [], "head": []}
    for _ in range(rounds):
        pair = fresh_workers()
        try:
            for worker in pair.values():
                worker.request(op="setup", kernel=name, param=param)
            order = list(pair)
            rng.shuffle(order)
            for side in order:
                times = pair[side].request(op="time", kernel=name, param=param, number=number, repeat=repeat)["times"]
                samples[side].append(min(times))
        finally:
            for worker in pair.values():
                worker.close()
    comp = KernelComparison(name, param, number, samples["base"], samples["head"])
    comp.ratio, comp.p_slower, comp.p_faster, comp.verdict = judge(comp.base, comp.head, factor, alpha)
    return comp


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def render_report(report: SpeedReport) -> str:
    """A Markdown table of the comparisons and a one-line verdict."""
    from tabulate import tabulate

    rows = [[c.kernel, c.param, c.number, _ms(statistics.median(c.base)), _ms(statistics.median(c.head)),
             f"{c.ratio:.3f}", f"{c.p_slower:.2g}", c.verdict.upper() if c.verdict == "slower" else c.verdict]
            for c in report.comparisons]
    out = [f"Speed gate: head ({report.head}) against base ({report.base}); {report.rounds} interleaved rounds; "
           f"flag when ratio >= {report.factor} and one-sided Mann-Whitney p < {report.alpha}.",
           "Code timed: " + "; ".join(f"{side}: {path}" for side, path in report.harness_files.items()), "",
           tabulate(rows, headers=["kernel", "size", "calls/sample", "base median", "head median", "head/base",
                                   "p (slower)", "verdict"], tablefmt="github"), ""]
    if report.identical_code:
        out.append("base and head hold identical harness sources: any difference above is noise and cannot fail "
                   "the gate")
    for name, err in report.errors.items():
        out.append(f"ERROR in {name}: {err.splitlines()[0]}")
    for name, err in report.skipped.items():
        out.append(f"skipped {name} (the base cannot run it): {err.splitlines()[0]}")
    if report.regressions:
        out.append("FAIL: " + ", ".join(f"{c.kernel} {c.ratio:.2f}x slower" for c in report.regressions))
    elif report.errors:
        out.append("FAIL: kernels could not be timed")
    else:
        out.append("OK: no kernel is slower beyond the factor with significance")
    return "\n".join(out)


def write_report_json(report: SpeedReport, path: Path) -> Path:
    doc = {"base": report.base, "head": report.head, "factor": report.factor, "alpha": report.alpha,
           "rounds": report.rounds, "harness_files": report.harness_files, "ok": report.ok,
           "identical_code": report.identical_code,
           "errors": report.errors, "skipped": report.skipped,
           "comparisons": [asdict(c) for c in report.comparisons], "timestamp": time.time()}
    return atomic_write_text(Path(path), json.dumps(doc, indent=2) + "\n")


__all__ = ["KernelComparison", "SpeedReport", "checkout_tree", "compare_speed", "judge", "render_report",
           "source_digest", "write_report_json"]
