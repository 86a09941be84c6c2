"""Kernel calls run in subprocesses, so that a crash fails the test instead of the run.

A test gives a prelude (imports the backend named by ``sys.argv[1]`` and binds the kernel names) and a table of
(call text, exception name regex, message regex); :func:`check_cases` runs every call in one child process and
checks each one's exception and message. :func:`simd_clone_outputs` runs one script with the AVX2 clones and
with the SSE2 path (the clone is chosen once per process).
"""

import os
import re
import subprocess
import sys

CASE_LOOP = '''
for case in sys.argv[2:]:
    try:
        eval(case)
    except Exception as exc:
        print(type(exc).__name__, "|", str(exc).replace("\\n", " "))
    else:
        print("NO ERROR | ok")
'''


def check_cases(prelude: str, which: str, cases, timeout: float = 300) -> None:
    """Run ``cases`` [(call, exception regex, message regex)] after ``prelude`` in a child for backend ``which``."""
    proc = subprocess.run([sys.executable, "-c", prelude + CASE_LOOP, which, *[c for c, _, _ in cases]],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(cases), proc.stdout + proc.stderr[-2000:]
    for (case, exc, message), line in zip(cases, lines):
        name, _, text = line.partition(" | ")
        assert re.fullmatch(exc, name), (case, line)
        assert re.search(message, text), (case, line)


def simd_clone_outputs(code: str, *args: str, timeout: float = 600) -> list[str]:
    """The stdout of ``python -c code *args`` with the AVX2 clones (``CALIBKIT_NO_AVX2=0``, where the CPU has
    AVX2) and on the SSE2 path (``CALIBKIT_NO_AVX2=1``), one child process each; a failing child fails the test
    with its stderr. ``PYTHONHASHSEED`` is fixed, so a script may print ``hash(...)`` of its results."""
    out = []
    for flag in ("0", "1"):
        env = dict(os.environ, CALIBKIT_NO_AVX2=flag, PYTHONHASHSEED="0")
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out.append(proc.stdout)
    return out
