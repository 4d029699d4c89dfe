"""Project subcommands dispatched by `main.py` (world, pretokenize, generate, evaluate, ...).

Each `commands/<name>.py` defines `run(...)` with typed, defaulted parameters and a docstring
whose first line is its one-line help; `main.py` runs it through jsonargparse, so every command
takes `--config file.yaml` and `--param value` like the Lightning subcommands.
"""
from modules.common.errors import ConfigError


class UsageError(ConfigError):
    """A mistake the user can fix (bad value, missing path). main.py prints it as one line and
    exits with status 2; the message names the offending value and the fix. (A ConfigError, the
    error type of the layers below, so both are reported alike.)"""
