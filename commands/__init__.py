"""Project subcommands dispatched by `main.py` (world, pretokenize, generate, sweep, ...).

Each `commands/<name>.py` defines `run(...)` with typed, defaulted parameters and a docstring
whose first line is its one-line help; `main.py` runs it through jsonargparse, so every command
takes `--config file.yaml` and `--param value` like the Lightning subcommands.
"""
from modules.common.errors import ConfigError


class UsageError(ConfigError):
    """A mistake the user can fix (bad value, missing path). main.py prints it as one line and
    exits with status 2; the message names the offending value and the fix. (A ConfigError, the
    error type of the layers below, so both are reported alike.)"""


# Errors a user fixes (a bad value, a missing, unreadable or unwritable path, a device that is
# not there): printed as one line with exit status 2, never as a traceback.
FILE_SYSTEM_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def is_user_error(err: BaseException) -> bool:
    # any other OSError that names a file (read-only file system, disk full, name too long)
    return isinstance(err, (ConfigError, *FILE_SYSTEM_ERRORS)) or (isinstance(err, OSError) and err.filename is not None)


def one_line(message: object) -> str:
    """A message on one line (jsonargparse and Lightning messages span several; the parts of a
    jsonargparse union dump that repeat the whole given value are dropped)."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    return " ".join(p for p in parts if not p.startswith(("Given value", "Subtypes:")))


def user_error(err: BaseException, parse: bool = False) -> BaseException | None:
    """The user's mistake behind `err`, along its cause chain (jsonargparse wraps the errors of the
    classes it instantiates): the outermost ConfigError (the project's own messages, the outer ones
    adding context such as the sweep point), else the innermost file-system error; for errors of
    the parser itself (`parse`: a value of the wrong type, an unknown key) the parser's own
    message, which names the key."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for candidate in chain:
        if isinstance(candidate, ConfigError):
            return candidate
    for candidate in reversed(chain):
        if is_user_error(candidate):
            return candidate
    return chain[0] if parse and chain else None


def innermost(err: BaseException) -> BaseException:
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return err


def is_config_error(err: BaseException) -> bool:
    return isinstance(err, ConfigError)
