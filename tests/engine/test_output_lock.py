"""One training per OUTPUT_DIR: a second process finds the folder's lock held and is told by whom; the lock of
a process that died (even by SIGKILL) is free at once."""
import os
import signal
import subprocess
import sys

import pytest

from dinat_m2f.engine import OutputDirInUseError, lock_output_dir, unlock_output_dir
from project_paths import REPO

HOLD = """
import sys
from dinat_m2f.engine.output_lock import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()  # holds the lock until the test closes stdin or kills it
"""


def start_holder(output_dir):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(output_dir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert process.stdout.readline() == "locked\n"
    return process


def test_a_held_folder_is_refused_naming_folder_and_holder_until_the_holder_dies(tmp_path):
    holder = start_holder(tmp_path / "out")
    try:
        with pytest.raises(OutputDirInUseError) as error:
            lock_output_dir(str(tmp_path / "out"))
        message = str(error.value)
        assert f"OUTPUT_DIR {tmp_path / 'out'} is in use by another training: process {holder.pid} on " in message
        assert "give this run another OUTPUT_DIR" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: nothing is cleaned up
        holder.wait()
    lock_output_dir(str(tmp_path / "out"))  # not stale: the kernel released it with the process
    try:
        assert f"process {os.getpid()} on " in (tmp_path / "out" / "training.lock").read_text()
        lock_output_dir(str(tmp_path / "out"))  # the holder itself may ask again
    finally:
        unlock_output_dir(str(tmp_path / "out"))


def test_a_lock_is_released_when_its_holder_exits(tmp_path):
    holder = start_holder(tmp_path)
    holder.communicate("")  # stdin closed: the holder exits normally
    assert holder.returncode == 0
    lock_output_dir(str(tmp_path))
    unlock_output_dir(str(tmp_path))
    assert (tmp_path / "training.lock").read_text() == ""
