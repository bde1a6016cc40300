"""Checks of how a script refuses bad usage: one line, exit status 2, nothing written, no log lines;
and of which modules start without TensorFlow."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What TensorFlow's, XLA's and absl's own logging writes.
TF_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
                    r"|All log messages before absl|oneDNN custom operations|cuda|rebuild TensorFlow",
                    re.MULTILINE)


def frameworks_imported(*modules):
    """The tensorflow and keras modules that importing `modules` (in a new process) brings in."""
    code = (f"import sys, {', '.join(modules)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def snapshot(folder):
    """{relative path: bytes} of every file and folder under `folder` (None for a folder)."""
    found = {}
    for parent, folders, names in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(parent, name), folder)] = None
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def assert_refused(result, script, folder, before, message=""):
    """A finished subprocess refused its command: exit 2, nothing on stdout, one stderr line
    `<script>: error: ...` holding `message`, no traceback or TensorFlow log line, and `folder` as it
    was (`before`, its snapshot)."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.args, result.returncode, result.stderr)
    assert result.stdout == "", (result.args, result.stdout)
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), (result.args, result.stderr)
    assert message in lines[0], (message, result.stderr)
    assert "Traceback" not in result.stderr and not TF_LOG.search(result.stderr)
    assert snapshot(folder) == before, result.args


def run_tool(script, *argv):
    """Run a top-level script (e.g. "lens.py") with argv as a user does, TensorFlow's log level as the
    user's environment leaves it (unset)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True, text=True,
                          env=env, timeout=300)
