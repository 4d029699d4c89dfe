"""The one error type for mistakes a user can fix (a bad config value, a missing or wrong file).

Raised by modules, datamodules and callbacks (in `__init__`/`setup`), it reaches `main.py`,
which prints it as one line and exits with status 2 (`commands.UsageError` is a subclass, so the
project commands and the Lightning subcommands report alike). The message names the offending
value and the fix. A subclass of ValueError, so code that expects ValueError keeps working.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A mistake the user can fix; printed by main.py as `error: <message>` with exit status 2."""


def require_positive(**values) -> None:
    """ConfigError naming the first value that is not a positive integer (batch sizes, step
    counts, grid sides): `require_positive(batch_size=bs)`. None is allowed (unset)."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
