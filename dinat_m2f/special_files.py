"""What stands at a path that is not a regular file: reading a FIFO blocks until someone writes, a device such as
/dev/zero never ends, a folder is not data. Every reader of user-given paths (checkpoints, configs, the demo's
images) refuses these by name instead of opening them."""
import os
import stat
from typing import Optional

__all__ = ["special_file_kind"]

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file_kind(path: "str | os.PathLike") -> Optional[str]:
    """What ``path`` is when it exists but is not a regular file (links followed), e.g. "a FIFO (named pipe)";
    None for a regular file or a path that does not exist (its reader reports that)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for is_kind, name in _KINDS if is_kind(mode)), "a special file")
