"""Timing worker of the speed gate (:mod:`harness.tracking.speed`); run as ``python -c <this source> KERNELS_FILE``.

Standalone on purpose: it imports nothing from the harness itself, so it runs
unchanged against the code of any commit.  The driver starts it with the
commit's tree as working directory (first on ``sys.path``), so the kernels
import *that* commit's ``harness``; the kernel definitions come from one file
(the head's ``benchmarks/kernels.py``), so both sides time the same inputs.

Protocol: one JSON object per line on stdin, one answer per line on stdout.
``{"op": "setup", "kernel": K, "param": P}`` -> ``{"ok": true, "first_call_s": s}``;
``{"op": "time", "kernel": K, "param": P, "number": n, "repeat": r}`` ->
``{"ok": true, "times": [seconds per call, r values]}``; errors -> ``{"ok": false, "error": "..."}``.
"""

import gc
import importlib.util
import json
import os
import sys
import time
import traceback


def load_kernels(path, module_name="speed_gate_kernels"):
    """The ``KERNELS`` mapping of a kernels file (name -> object with ``setup(param)`` and ``gate_param``)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    return module.KERNELS


def _answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(kernels_file):
    sys.path.insert(0, os.getcwd())  # the tree under test (python -c puts '' there; make it explicit)
    kernels = load_kernels(kernels_file)
    harness_file = None
    try:
        import harness

        harness_file = harness.__file__
    except ImportError:
        pass
    _answer({"ok": True, "ready": True, "harness": harness_file})
    fns = {}
    for line in sys.stdin:
        try:
            req = json.loads(line)
            key = (req["kernel"], json.dumps(req["param"]))
            if req["op"] == "setup":
                fns[key] = kernels[req["kernel"]].setup(req["param"])
                if "torch" in sys.modules:  # single-threaded kernels: steadier, independent of the core count
                    sys.modules["torch"].set_num_threads(1)
                t0 = time.perf_counter()
                fns[key]()
                _answer({"ok": True, "first_call_s": time.perf_counter() - t0})
            elif req["op"] == "time":
                fn, number = fns[key], int(req["number"])
                times = []
                gc_was_enabled = gc.isenabled()
                gc.disable()
                try:
                    for _ in range(int(req["repeat"])):
                        t0 = time.perf_counter()
                        for _ in range(number):
                            fn()
                        times.append((time.perf_counter() - t0) / number)
                finally:
                    if gc_was_enabled:
                        gc.enable()
                _answer({"ok": True, "times": times})
            else:
                _answer({"ok": False, "error": f"unknown op {req['op']!r}"})
        except Exception as exc:  # noqa: BLE001 - report to the driver, keep serving
            _answer({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


if __name__ == "__main__":
    main(sys.argv[1])
