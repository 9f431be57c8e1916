"""How noisy is the CPU gate on this machine? Runs the smoke slice several times back to back
(from the artifact and evaluation cache), then:

- per case: the spread of the same-run speedup across the runs ((max - min) / median);
- false regressions: each later run gated against the first by the CPU gate's rules, with
  nothing changed in between (every regression found is a false alarm);
- a real slowdown: one more run with ``--compresslab-threads 1`` gated against the first
  (2 threads): the gate must fail it.

    .venv/bin/python benchmarks/gate_noise.py [--runs 5] [--rules "size:+1% ..."] [--out DIR]

Exit 0 when there is no false regression and the slowdown was caught, 1 otherwise. It measures
a machine, not the code: run it on a quiet machine, never as a unit test.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from compresslab import compare, runs

ROOT = Path(__file__).resolve().parent.parent


def makefile_default(name: str) -> str:
    """The Makefile's default of a variable (``NAME ?= value``): one source for the CPU gate's rules."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        key, sep, value = line.partition("?=")
        if sep and key.strip() == name:
            return value.strip()
    raise KeyError(f"Makefile has no default for {name}")


def run_smoke(out: Path, label: str, rounds: int, extra: list[str]) -> runs.Run:
    """One smoke run in its own pytest process (a process's noise is what the gate must survive)."""
    results = out / label
    # the smoke tier, or the cases COMPRESSLAB_MATRIX lists when it is set
    tier = [] if os.environ.get("COMPRESSLAB_MATRIX") else ["--compresslab-tier", "smoke"]
    command = [sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "test_compression.py"), "-q",
               "-p", "no:cacheprovider", "--compresslab-rounds", str(rounds), f"--compresslab-results-dir={results}",
               *tier, *extra]
    env = dict(os.environ)
    print(f"[{label}] {shlex.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env, check=False, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: a floor failed; the gate still compares what ran
        sys.exit(f"[{label}] pytest exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return runs.load(results / "latest.json")


def speedup_spread(all_runs: list[runs.Run]) -> list[tuple[str, list[float], float]]:
    rows = []
    for name, record in all_runs[0].records.items():
        if record.chain == "fp32":
            continue
        values = [compare.field_value(r.records[name], "speedup") for r in all_runs if name in r.records]
        values = [v for v in values if v is not None]
        if values:
            rows.append((f"{record.model}-{record.chain}", values,
                         (max(values) - min(values)) / statistics.median(values)))
    return rows


def gate(base: runs.Run, head: runs.Run, rules: list[compare.Rule]) -> list[str]:
    comparison = compare.compare(base, head, rules)
    return [f"{row.model}-{row.chain}: {message}" for row, message in comparison.regressions]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per case (make smoke: 10)")
    parser.add_argument("--rules", default=None, help="gate rules (default: the Makefile's SMOKE_FAIL)")
    parser.add_argument("--out", type=Path, default=ROOT / ".compresslab" / "gate-noise")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error(f"--runs must be >= 2 to compare runs, got {args.runs}")
    rule_text = args.rules or makefile_default("SMOKE_FAIL")

    all_runs = [run_smoke(args.out, f"run{i + 1}", args.rounds, []) for i in range(args.runs)]
    slow = run_smoke(args.out, "threads1", args.rounds, ["--compresslab-threads", "1"])
    rules = compare.parse_rules([rule_text], compare.valid_fields(*all_runs))

    print(f"\nrules: {rule_text}\n\nspeedup across {len(all_runs)} runs (same-run fp32 / case, median of rounds)")
    spreads = speedup_spread(all_runs)
    for case, values, spread in spreads:
        print(f"  {case:32s} {' '.join(f'{v:5.2f}x' for v in values)}   spread {spread:6.1%}")
    false_alarms = [(i + 2, line) for i, head in enumerate(all_runs[1:]) for line in gate(all_runs[0], head, rules)]
    print(f"\nfalse regressions (runs 2..{len(all_runs)} vs run 1, nothing changed): {len(false_alarms)}")
    for index, line in false_alarms:
        print(f"  run{index}: {line}")
    caught = gate(all_runs[0], slow, rules)
    print(f"\n--compresslab-threads 1 vs run 1 (2 threads): {len(caught)} regression(s)")
    for line in caught:
        print(f"  {line}")
    widest = max((spread for _, _, spread in spreads), default=0.0)
    print(f"\nwidest speedup spread {widest:.1%}; false regressions {len(false_alarms)}; "
          f"slowdown {'caught' if caught else 'MISSED'}")
    return 0 if not false_alarms and caught else 1


if __name__ == "__main__":
    sys.exit(main())
