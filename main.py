"""NextFlow experiment system: one entry point.

    python main.py fit|validate|test|predict --config configs/experiment/<name>.yaml   (Lightning CLI)
    python main.py <project command> --config <file.yaml> [--key value ...]             (see --help)

Lightning subcommands run in subclass mode for both model and datamodule, so configs name
classes by short name (`class_path: TokenizerModule`) because `modules` and `datamodules`
are imported here first. `omegaconf+` parser mode resolves `${...}` interpolation after all
`--config` files are merged (REFERENCE.md, "Pitfalls": plain `omegaconf` does not cross files).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys

# Lightning subcommands and what they do (the CLI's own help has the details).
LIGHTNING_COMMANDS = {
    "fit": "Train a module (tokenizer, AR, GRPO, refiner) from a config",
    "validate": "Run a module's validation loop / benchmark suite for a checkpoint",
    "test": "Run a module's test loop",
    "predict": "Run a module's predict loop",
}
# Project subcommands live in commands/<name>.py and are listed here in the order of the pipeline.
# Modules whose LightningModules / LightningDataModules / callbacks configs may name by short class name.
# (Listed here rather than imported by the package __init__s, so that `import shapes`
# stays light.)
REGISTERED_CLASS_MODULES = (
    "datamodules.raw", "datamodules.pretokenized_dm",
    "modules.tokenizer", "modules.ar.module", "modules.rl.module", "datamodules.prompts",
    "callbacks.scale_dropping", "callbacks.curriculum", "callbacks.evaluation",
)
PROJECT_COMMANDS = ("world", "pretokenize", "generate", "evaluate", "bench", "baselines", "report", "rescore", "sweep",
                    "quickstart")


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


def run_project_command(name: str, argv: list[str]) -> int:
    from jsonargparse import CLI

    from commands import UsageError

    module = importlib.import_module(f"commands.{name}")
    params = list(inspect.signature(module.run).parameters.values())
    if argv and not argv[0].startswith("-") and params:
        argv = [f"--{params[0].name}", *argv]  # `main.py report runs/x` == `main.py report --path runs/x`
    try:
        CLI(module.run, args=argv, as_positional=False, parser_mode="omegaconf+", prog=f"main.py {name}")
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run_lightning(argv: list[str]) -> None:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    # Subclass mode finds classes by short name only once their modules are imported.
    for name in REGISTERED_CLASS_MODULES:
        importlib.import_module(name)

    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
    )


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
    if argv[0] not in LIGHTNING_COMMANDS:
        known = ", ".join([*LIGHTNING_COMMANDS, *_available_project_commands()])
        print(f"error: unknown command {argv[0]!r}; choose one of: {known}", file=sys.stderr)
        return 2
    run_lightning(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
