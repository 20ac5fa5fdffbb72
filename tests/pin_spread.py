"""
how far the --quick run's numbers move when only the floating-point arithmetic changes, which is what another CPU
changes: tests/test_experiment.py's pinned run, repeated under other thread counts, other kernels (ATEN_CPU_CAPABILITY
for torch's own loops, MKL_ENABLE_INSTRUCTIONS for its matrix products). it prints, for each pinned number, the
largest change from the pins seen in any variant; test_experiment.py's tolerances are a margin above those.

    python tests/pin_spread.py                 # every variant, one after another (about 15 minutes on 2 cores)
    python tests/pin_spread.py --only threads-1 --only mkl-avx --json spread.json

Standard library only: each variant is a fresh python process, so each builds and pretrains its own reference.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {  # name -> environment; each differs from the machine's plain setting in its arithmetic only
    "threads-1": dict(OMP_NUM_THREADS="1"),
    "threads-2": dict(OMP_NUM_THREADS="2"),
    "threads-3": dict(OMP_NUM_THREADS="3"),
    "aten-default": dict(OMP_NUM_THREADS="2", ATEN_CPU_CAPABILITY="default"),
    "mkl-sse42": dict(OMP_NUM_THREADS="2", MKL_ENABLE_INSTRUCTIONS="SSE4_2"),
    "mkl-avx": dict(OMP_NUM_THREADS="1", MKL_ENABLE_INSTRUCTIONS="AVX", ATEN_CPU_CAPABILITY="default"),
}
CHILD = """
import json, sys
sys.path[:0] = [{here!r}, {tests!r}]  # the root (rddpo.py, the harness, test_rddpo.py) and tests/
import test_experiment
results, _ = test_experiment.experiment.run(test_experiment.quick({out!r}, methods=test_experiment.PINNED_METHODS))
print("NUMBERS " + json.dumps(test_experiment.pinned_numbers(results)))
"""


def run_variant(name, env):
    """one variant's pinned numbers {method: [..]}, from a child process in its own output folder."""
    with tempfile.TemporaryDirectory() as out:
        code = CHILD.format(here=HERE, tests=os.path.join(HERE, "tests"), out=out)
        proc = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", **env})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("NUMBERS ")]
    if proc.returncode or not lines:
        raise SystemExit(f"error: variant {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1][len("NUMBERS "):])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(VARIANTS), help="run only these variants (repeatable)")
    ap.add_argument("--json", default="", help="also write every variant's numbers to this file")
    args = ap.parse_args(argv)
    sys.path[:0] = [HERE, os.path.join(HERE, "tests")]
    import test_experiment
    seen = {}
    for name in args.only or VARIANTS:
        seen[name] = run_variant(name, VARIANTS[name])
        worst = test_experiment.pin_deviation(seen[name])
        print(f"{name:13s} largest change from the pins: " + ", ".join(f"{k} {v:.2g}" for k, v in worst.items()),
              flush=True)
        if args.json:  # after each variant, so that a failure later keeps what was measured
            with open(args.json, "w") as fh:
                json.dump(seen, fh, indent=1)
    print("over all variants: " + ", ".join(
        f"{k} {max(test_experiment.pin_deviation(v)[k] for v in seen.values()):.2g}" for k in test_experiment.PIN_KEYS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
