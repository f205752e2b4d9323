"""Per-cell resource measurement: wall seconds, CPU seconds, peak resident memory."""

from __future__ import annotations

import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _read_hwm_mb() -> float | None:
    """VmHWM (peak RSS since the last reset) in MiB, or None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where not allowed."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _current_rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


@dataclass
class Measurement:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0


class measure:
    """Context manager measuring one cell.

    Peak memory is the process's peak resident set size during the block, in
    MiB: exact on Linux (the kernel's high-water mark, reset at entry);
    elsewhere sampled every 10 ms by a background thread.
    """

    def __enter__(self) -> Measurement:
        self.result = Measurement()
        self._exact = _reset_hwm() and _read_hwm_mb() is not None
        self._stop = threading.Event()
        self._peak = _current_rss_mb()
        if not self._exact:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self.result

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._peak = max(self._peak, _current_rss_mb())

    def __exit__(self, *exc: object) -> None:
        self.result.wall_s = time.perf_counter() - self._wall
        self.result.cpu_s = time.process_time() - self._cpu
        if self._exact:
            self.result.peak_rss_mb = float(_read_hwm_mb() or 0.0)
        else:
            self._stop.set()
            self._thread.join()
            self.result.peak_rss_mb = max(self._peak, _current_rss_mb())
