"""Check that the test suite catches deliberate breakages of hero (``scripts/mutations.py``).

Run: ``.venv/bin/python scripts/mutation_check.py`` (about 5 minutes). For each breakage it runs the tests that
compare hero with independent references (``tests/test_reference.py`` under aot_eager, ``tests/test_reliability.py``)
with the breakage applied, stopping at the first failure, and reports which test caught it. The unbroken run must
pass. Exit status 1 if a breakage goes unnoticed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_reference.py", "tests/test_reliability.py", "-k", "not inductor"]


def run(mutation: str) -> tuple[bool, str]:
    """Whether the tests pass with ``mutation`` applied ("" for none), and the first failing test."""
    # COLUMNS: pytest drops the failure's message from a summary line wider than the terminal.
    env = {**os.environ, "HERO_MUTATION": mutation, "PYTHONPATH": str(ROOT / "scripts"), "COLUMNS": "1000"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "mutations", *TESTS],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    failed = re.search(r"^FAILED (\S+) - (.*)$", done.stdout, re.MULTILINE)
    if failed and "assert" not in failed.group(2).lower():
        # An exception, not a failed check: the breakage itself is broken, it proves nothing.
        return True, f"ERROR {failed.group(1)}: {failed.group(2)}"
    return done.returncode == 0, failed.group(1) if failed else ""


def main() -> int:
    sys.path.insert(0, str(ROOT / "scripts"))
    from mutations import MUTATIONS

    passed, _ = run("")
    print(f"| breakage | caught by |\n|---|---|\n| none | {'all pass' if passed else 'FAILS unbroken'} |")
    missed = not passed
    for name in MUTATIONS:
        survived, caught_by = run(name)
        missed |= survived
        verdict = (caught_by or "NOT CAUGHT") if survived else f"`{caught_by}`"
        print(f"| {name.replace('_', ' ')} | {verdict} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
