"""Show that every quality bar of the tests fails when hero is broken.

Run: ``.venv/bin/python scripts/calibrate_bars.py [pytest args]`` (``HERO_BREAKAGES=a,b``: some breakages only).
The tests marked ``quality_bar(*breakages)`` run once unbroken (all must pass), then once per breakage of
``scripts/mutations.py`` with only the tests that name it; each of those must fail on an assertion. Every PSNR a
test computes is recorded (``scripts/psnr_probe.py``), so the table shows the lowest PSNR of the unbroken run next
to the lowest under the breakage. Exit status 1 if a bar passes under a breakage it claims to catch, or fails
unbroken.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(breakage: str, extra: list[str]) -> tuple[dict[str, str], dict[str, float]]:
    """Each marked test's outcome ("passed", or the first line of its failure) and its lowest PSNR."""
    with tempfile.TemporaryDirectory() as scratch:
        log, report = Path(scratch, "psnr.jsonl"), Path(scratch, "junit.xml")
        env = {**os.environ, "HERO_MUTATION": breakage, "HERO_PSNR_LOG": str(log),
               "PYTHONPATH": str(ROOT / "scripts")}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "quality_bar", "-p", "mutations", "-p",
                        "psnr_probe", f"--junitxml={report}", *extra], cwd=ROOT, env=env, capture_output=True)
        outcomes = {}
        for case in ET.parse(report).iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            outcomes[name] = "passed" if problem is None else (problem.get("message") or "failed").splitlines()[0]
        lowest: dict[str, float] = defaultdict(lambda: float("inf"))
        if log.exists():
            for line in log.read_text().splitlines():
                entry = json.loads(line)
                lowest[entry["test"]] = min(lowest[entry["test"]], entry["psnr"])
        return outcomes, dict(lowest)


def main(extra: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "scripts"))
    from mutations import MUTATIONS

    unbroken, unbroken_psnr = run("", extra)
    bad = [test for test, outcome in unbroken.items() if outcome != "passed"]
    print("| test | breakage | lowest PSNR unbroken -> broken (dB) | result |\n|---|---|---|---|")
    for test in bad:
        print(f"| `{test}` | none | {unbroken_psnr.get(test, float('nan')):.1f} | FAILS UNBROKEN: {unbroken[test]} |")
    chosen = os.environ.get("HERO_BREAKAGES")  # a comma-separated subset, to rerun some breakages only
    for breakage in chosen.split(",") if chosen else MUTATIONS:
        outcomes, psnr = run(breakage, extra)
        for test, outcome in sorted(outcomes.items()):
            # Only a failed assertion counts: an exception would mean the breakage itself is broken.
            caught = outcome != "passed" and "assert" in outcome.lower()
            bad += [] if caught else [test]
            before, after = unbroken_psnr.get(test, float("nan")), psnr.get(test, float("nan"))
            verdict = "fails" if caught else ("PASSES" if outcome == "passed" else f"ERROR: {outcome}")
            print(f"| `{test}` | {breakage.replace('_', ' ')} | {before:.1f} -> {after:.1f} | {verdict} |",
                  flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
