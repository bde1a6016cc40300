"""What a folder holds, to check that a refused command wrote nothing."""

import os


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
