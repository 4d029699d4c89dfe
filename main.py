"""NextFlow experiment system: one entry point.

    python main.py fit|validate --config configs/experiment/<name>.yaml   (Lightning CLI)
    python main.py <project command> --config <file.yaml> [--key value ...]  (see --help)

Lightning subcommands run through commands/lightning_cli.py (ProjectCLI): subclass mode for both
model and datamodule, `compose:` lists in experiment files expanded into layered `--config` files,
`omegaconf+` parser mode (`${...}` resolved after all layers are merged; REFERENCE.md, "Pitfalls"),
and library chatter silenced in one place (commands.lightning_cli.quiet_lightning).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys

from commands import is_config_error, one_line, user_error

# Lightning subcommands and what they do (the CLI's own help has the details).
LIGHTNING_COMMANDS = {
    "fit": "Train a module (the tokenizer or the AR model) from a config",
    "validate": "Run a module's validation loop for a checkpoint (AR: with the benchmark suite)",
}
# Lightning subcommands this project does not offer, and what to run instead.
NOT_OFFERED = {
    "test": "no module has a test split or test_step; `main.py validate` scores the held-out split",
    "predict": "no module has predict_step; `main.py generate` makes images and answers for a prompt file",
}
# Project subcommands live in commands/<name>.py and are listed here in the order of the pipeline.
PROJECT_COMMANDS = ("world", "ingest", "pretokenize", "generate", "bench", "baselines", "report", "rescore", "sweep", "quickstart")


def _available_project_commands() -> dict[str, str]:
    """name -> one-line help, for the commands whose module exists in this checkout."""
    found = {}
    for name in PROJECT_COMMANDS:
        try:
            module = importlib.import_module(f"commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"commands.{name}":
                continue
            raise
        doc = inspect.getdoc(module.run) or ""
        found[name] = doc.splitlines()[0] if doc else ""
    return found


def print_help() -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(__doc__.strip().splitlines()[0], style="bold")
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("command")
    table.add_column("what it does")
    table.add_column("kind", style="dim")
    for name, help_line in LIGHTNING_COMMANDS.items():
        table.add_row(name, help_line, "lightning")
    for name, help_line in _available_project_commands().items():
        table.add_row(name, help_line, "project")
    console.print(table)
    console.print("Run `python main.py <command> --help` for a command's options; every command takes --config.")


def report(err: BaseException) -> int:
    if isinstance(err, OSError) and not is_config_error(err) and err.filename is not None:
        message = f"{err.filename}: {err.strerror or err}; check the path (and that it is writable for outputs)"
    else:
        message = one_line(err) or type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2


def one_line_errors(call) -> int:
    """Run `call()`: 0 on success; a user error (one found along the cause chain, or the parser's
    own) printed as one line with exit status 2; anything else re-raised."""
    from jsonargparse import ArgumentError

    try:
        call()
    except Exception as err:  # noqa: BLE001 - user errors become one line; anything else is re-raised
        found = user_error(err, parse=isinstance(err, ArgumentError))
        if found is None:
            raise
        return report(found)
    return 0


def run_project_command(name: str, argv: list[str]) -> int:
    from jsonargparse import CLI

    module = importlib.import_module(f"commands.{name}")
    params = list(inspect.signature(module.run).parameters.values())
    if argv and not argv[0].startswith("-") and params:
        argv = [f"--{params[0].name}", *argv]  # `main.py report runs/x` == `main.py report --path runs/x`
    flags = {f"--{p.name}" for p in params if p.annotation in (bool, "bool")}
    argv = [a for k, arg in enumerate(argv)  # a bare boolean flag means true: `bench packing --calibrate`
            for a in ([arg, "true"] if arg in flags and (k + 1 == len(argv) or argv[k + 1].startswith("--"))
                      else [arg])]

    @functools.wraps(module.run)
    def run(*args, **kwargs):
        if isinstance(kwargs.get("device"), str):  # every command's --device, checked before any work
            from modules.common.devices import require_device

            require_device(kwargs["device"])
        return module.run(*args, **kwargs)

    return one_line_errors(lambda: CLI(run, args=argv, as_positional=False, parser_mode="omegaconf+",
                                       prog=f"main.py {name}", exit_on_error=False))


def run_lightning(argv: list[str]) -> int:
    """`fit` / `validate` through the project's LightningCLI (config composition, safe and
    kind-checked `--ckpt_path`, quiet logs); user errors become one line with exit 2."""
    from lightning.pytorch.cli import LightningCLI

    from commands.lightning_cli import ProjectCLI, quiet_lightning

    quiet_lightning()
    kwargs = {"parser_mode": "omegaconf+", "exit_on_error": False,
              **{cmd: {"exit_on_error": False} for cmd in LightningCLI.subcommands()}}
    return one_line_errors(lambda: ProjectCLI(args=argv, parser_kwargs=kwargs))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_help()
        return 0
    if argv[0] in PROJECT_COMMANDS:
        if argv[0] not in _available_project_commands():
            print(f"error: command {argv[0]!r} is not built yet in this checkout", file=sys.stderr)
            return 2
        return run_project_command(argv[0], argv[1:])
    if argv[0] in NOT_OFFERED:
        print(f"error: `main.py {argv[0]}` is not offered: {NOT_OFFERED[argv[0]]}", file=sys.stderr)
        return 2
    if argv[0] not in LIGHTNING_COMMANDS:
        known = ", ".join([*LIGHTNING_COMMANDS, *_available_project_commands()])
        print(f"error: unknown command {argv[0]!r}; choose one of: {known}", file=sys.stderr)
        return 2
    return run_lightning(argv)


if __name__ == "__main__":
    sys.exit(main())
