"""The one exception base of mimzoo. Every error mimzoo raises for a file, a name, an argument or a download derives
from `mimzoo.Error`, so a caller can catch them all and the CLI prints one line for each. Each one also derives
from the builtin it refines (ValueError, FileNotFoundError, KeyError, RuntimeError), so `except ValueError` code
written against earlier versions keeps working."""
from __future__ import annotations

import errno

# errno values of a folder that cannot be written (read-only, full, over quota, no permission): the user's to fix
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


class Error(Exception):
    """Base of every mimzoo error: the message names the problem and the fix."""


class ConfigError(Error, ValueError):
    """An argument, option or config value that cannot work (a wrong name, a clash, a value out of range)."""


class NotFoundError(Error, FileNotFoundError):
    """A file or folder the user named (or a layout expects) is not there."""


class UnknownNameError(Error, KeyError):
    """A name that no table knows (a zoo entry, a method): the message lists close ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
