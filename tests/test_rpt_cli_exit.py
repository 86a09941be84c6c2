"""cli.run, the ``calibkit`` command as a process (``python -m calibkit.cli``): main's output and exit code, with
what the command leaves frozen out of the garbage collector before the interpreter's exit (gc.freeze).

Each case runs the command in a subprocess, against cli.main called in this process (the reference)."""

import json
import subprocess
import sys
import textwrap

import pytest

from calibkit import cli

FROZEN = textwrap.dedent('''
    import atexit, gc, sys
    import calibkit.cli as cli
    atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0, flush=True))
    sys.argv[1:] = ["report", "--example", "--quiet", "--n-bins", "5"]
    cli.run()
''')


def _command(*args):
    return subprocess.run([sys.executable, "-m", "calibkit.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_command_prints_what_main_prints(capsys):
    assert cli.main(["report", "--example", "--quiet", "--n-bins", "5"]) == 0
    expected = capsys.readouterr().out
    proc = _command("report", "--example", "--quiet", "--n-bins", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == expected


def test_command_json_to_stdout_is_complete(capsys):
    assert cli.main(["report", "--example", "--json", "-"]) == 0
    expected = json.loads(capsys.readouterr().out)
    proc = _command("report", "--example", "--json", "-")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == expected


@pytest.mark.parametrize("args, code", [(["report", "/nonexistent/dump.npy"], 2), (["report"], 2)])
def test_command_exit_code_of_a_user_error(args, code):
    proc = _command(*args)
    assert proc.returncode == code
    assert proc.stderr.startswith("calibkit") and len(proc.stderr.strip().splitlines()) == 1


def test_run_freezes_before_the_exit_and_atexit_handlers_still_run():
    proc = subprocess.run([sys.executable, "-c", FROZEN], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith("frozen True")
