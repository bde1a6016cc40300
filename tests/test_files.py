"""Outputs never replace what they point at: regular files are replaced atomically, symbolic links are
followed, pipes and devices are written to directly, `-` is standard output; a failed write names the
file the user gave; one process holds a run folder at a time."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from gpt2_tf.files import FolderLock, Held, WriteError, atomic_write, output_target, write_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leftovers(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_a_regular_file_is_replaced_whole_and_keeps_its_permissions(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    with atomic_write(str(path), encoding="utf-8") as f:
        f.write("new")
        assert path.read_text() == "old"  # readers see the old file until the new one is complete
    assert path.read_text() == "new" and oct(os.stat(path).st_mode & 0o777) == "0o640"
    with pytest.raises(RuntimeError), atomic_write(str(path), encoding="utf-8") as f:
        f.write("half")
        raise RuntimeError
    assert path.read_text() == "new" and not leftovers(tmp_path)


def test_a_symbolic_link_is_followed_and_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(os.path.join("real", "target.txt"))
    chain = tmp_path / "chain.txt"
    chain.symlink_to("link.txt")
    with atomic_write(str(chain), encoding="utf-8") as f:
        f.write("new")
    assert chain.is_symlink() and link.is_symlink() and target.read_text() == "new"
    assert not leftovers(tmp_path / "real") and not leftovers(tmp_path)
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(os.path.join("real", "made.txt"))
    with atomic_write(str(dangling)) as f:
        f.write(b"made")
    assert dangling.is_symlink() and (tmp_path / "real" / "made.txt").read_bytes() == b"made"


def test_a_named_pipe_is_written_in_order_without_a_temporary_file(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()))
    reader.start()
    assert output_target(str(fifo)) == ("direct", str(fifo))
    with atomic_write(str(fifo), encoding="utf-8") as f:
        for i in range(1000):
            f.write(f"{i}\n")
    reader.join(timeout=30)
    assert received == ["".join(f"{i}\n" for i in range(1000)).encode()]
    assert fifo.is_fifo() and os.listdir(tmp_path) == ["fifo.json"]


def test_devices_and_standard_output_are_written_directly(tmp_path, capfd):
    with atomic_write("/dev/null", encoding="utf-8") as f:
        f.write("gone")
    assert output_target("/dev/stdout")[0] == "direct" and output_target("/dev/null")[0] == "direct"
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    with atomic_write("-", encoding="utf-8") as f:
        f.write("to stdout\n")
    with atomic_write("-") as f:
        f.write(b"bytes too\n")
    assert capfd.readouterr().out == "to stdout\nbytes too\n"
    link = tmp_path / "out"
    link.symlink_to("/dev/null")
    with atomic_write(str(link), encoding="utf-8") as f:
        f.write("gone too")
    assert link.is_symlink() and os.readlink(link) == "/dev/null"


def test_a_failed_write_names_the_users_file_never_the_temporary_one(read_only_folder, full_disk):
    with pytest.raises(WriteError) as e, atomic_write("/dev/full", encoding="utf-8") as f:
        f.write("x" * 100_000)
    assert str(e.value) == "cannot write /dev/full: No space left on device"
    assert write_problem(str(read_only_folder / "x.json")).startswith(f"cannot write in {read_only_folder}: ")
    with pytest.raises(WriteError) as e, atomic_write(str(read_only_folder / "x.json")) as f:
        f.write(b"x")
    assert str(e.value).startswith(f"cannot write {read_only_folder / 'x.json'}: ")
    assert ".tmp" not in str(e.value)
    disk = full_disk("64k")
    with pytest.raises(WriteError) as e, atomic_write(str(disk / "big.bin")) as f:
        f.write(b"x" * 1_000_000)
    assert str(e.value) == f"cannot write {disk / 'big.bin'}: No space left on device"
    assert os.listdir(disk) == []  # nothing half-written is left


def test_problems_are_found_before_writing(tmp_path):
    assert write_problem(str(tmp_path / "new.json")) is None
    assert write_problem("-") is None and write_problem("/dev/null") is None
    assert write_problem(str(tmp_path)) == f"{tmp_path} is a folder; give a file name"
    assert write_problem(str(tmp_path / "no" / "x.json")) == \
        f"cannot write {tmp_path / 'no' / 'x.json'}: folder {tmp_path / 'no'} does not exist"


def test_dev_stdout_through_a_pipe_is_written_and_left_alone():
    """The shape of `score.py --tsv /dev/stdout | head -2`, without the model: /dev/stdout is a pipe."""
    code = ("from gpt2_tf.files import atomic_write\n"
            "with atomic_write('/dev/stdout', encoding='utf-8') as f:\n"
            "    f.writelines(f'row {i}\\n' for i in range(100000))\n")
    before = os.lstat("/dev/stdout") if os.path.lexists("/dev/stdout") else None
    out = subprocess.run(f"{sys.executable} -c \"{code}\" | head -2", shell=True, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "row 0\nrow 1\n"
    if before is not None:
        after = os.lstat("/dev/stdout")
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


HOLDER = ("import sys, time\nfrom gpt2_tf.files import FolderLock\nFolderLock(sys.argv[1]).acquire()\n"
          "print('held', flush=True)\ntime.sleep(600)\n")


def test_one_process_holds_a_folder_and_its_death_releases_it(tmp_path):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, folder], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(Held) as e:
            FolderLock(folder).acquire()
        assert e.value.pid == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no chance to clean up
        holder.wait()
    with FolderLock(folder) as lock:
        assert lock.fd is not None
        with pytest.raises(Held):
            FolderLock(folder).acquire()  # held within one process too
    FolderLock(folder).acquire().release()
