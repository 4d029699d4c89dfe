"""NextFlow experiment system: one entry point.

    python main.py fit|validate|test|predict --config configs/experiment/<name>.yaml   (Lightning CLI)
    python main.py <project command> --config <file.yaml> [--key value ...]             (see --help)

Lightning subcommands run in subclass mode for both model and datamodule, so configs name
classes by short name (`class_path: TokenizerModule`) because `modules` and `datamodules`
are imported here first. `omegaconf+` parser mode resolves `${...}` interpolation after all
`--config` files are merged (REFERENCE.md, "Pitfalls": plain `omegaconf` does not cross files).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import warnings

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
    "modules.tokenizer", "modules.ar.module",
    "callbacks.scale_dropping", "callbacks.curriculum", "callbacks.evaluation",
)
PROJECT_COMMANDS = ("world", "pretokenize", "generate", "evaluate", "bench", "report", "rescore", "sweep", "quickstart")


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


# Errors a user fixes (a bad value, a missing, unreadable or unwritable path, a device that is
# not there): printed as one line with exit status 2, never as a traceback.
FILE_SYSTEM_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def is_user_error(err: BaseException) -> bool:
    from modules.common.errors import ConfigError

    # any other OSError that names a file (read-only file system, disk full, name too long)
    return isinstance(err, (ConfigError, *FILE_SYSTEM_ERRORS)) or (isinstance(err, OSError) and err.filename is not None)


def one_line(message: object) -> str:
    """A message on one line (jsonargparse and Lightning messages span several; the parts of a
    jsonargparse union dump that repeat the whole given value are dropped)."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    return " ".join(p for p in parts if not p.startswith(("Given value", "Subtypes:")))


def user_error(err: BaseException, parse: bool = False) -> BaseException | None:
    """The user's mistake behind `err`: the innermost ConfigError or file-system error along its
    cause chain (jsonargparse wraps the errors of the classes it instantiates); for errors of the
    parser itself (`parse`: a value of the wrong type, an unknown key) the parser's own message,
    which names the key."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for candidate in reversed(chain):
        if is_user_error(candidate):
            return candidate
    return chain[0] if parse and chain else None


def report(err: BaseException) -> int:
    if isinstance(err, OSError) and not is_config_error(err) and err.filename is not None:
        message = f"{err.filename}: {err.strerror or err}; check the path (and that it is writable for outputs)"
    else:
        message = one_line(err) or type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2


def is_config_error(err: BaseException) -> bool:
    from modules.common.errors import ConfigError

    return isinstance(err, ConfigError)


def run_project_command(name: str, argv: list[str]) -> int:
    from jsonargparse import CLI

    module = importlib.import_module(f"commands.{name}")
    params = list(inspect.signature(module.run).parameters.values())
    if argv and not argv[0].startswith("-") and params:
        argv = [f"--{params[0].name}", *argv]  # `main.py report runs/x` == `main.py report --path runs/x`

    @functools.wraps(module.run)
    def run(*args, **kwargs):
        if isinstance(kwargs.get("device"), str):  # every command's --device, checked before any work
            from modules.common.devices import require_device

            require_device(kwargs["device"])
        return module.run(*args, **kwargs)

    try:
        CLI(run, args=argv, as_positional=False, parser_mode="omegaconf+", prog=f"main.py {name}",
            exit_on_error=False)
    except Exception as err:  # noqa: BLE001 - user errors become one line; anything else is re-raised
        from jsonargparse import ArgumentError

        found = user_error(err, parse=isinstance(err, ArgumentError))
        if found is None:
            raise
        return report(found)
    return 0


def _innermost(err: BaseException) -> BaseException:
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return err


# Lightning's `--ckpt_path` special values (not files).
CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry")


def _explicit_model_keys(argv: list[str]) -> list[str]:
    """init_args keys the command line sets explicitly (`--model.init_args.tokenizer_ckpt x`)."""
    keys = []
    for arg in argv:
        for prefix in ("--model.init_args.", "--model."):
            if arg.startswith(prefix):
                key = arg[len(prefix):].split("=", 1)[0]
                if key and key not in ("class_path", "init_args") and "." not in key:
                    keys.append(key)
                break
    return keys


def run_lightning(argv: list[str]) -> int:
    from jsonargparse import ArgumentError
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    from modules.common.checkpoints import checkpoint_kind, describe, load_checkpoint
    from modules.common.errors import ConfigError

    # Subclass mode finds classes by short name only once their modules are imported.
    for name in REGISTERED_CLASS_MODULES:
        importlib.import_module(name)
    # main.py passes argv on purpose (its own dispatch reads sys.argv first)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

    class ProjectCLI(LightningCLI):
        """LightningCLI whose `--ckpt_path` is loaded safely and checked against the configured
        module, and whose explicit `--model.*` values win over the checkpoint's hyper-parameters
        (Lightning's own `_parse_ckpt_path` replaces the whole model config with them)."""

        def _parse_ckpt_path(self) -> None:
            sub = self.config.get("subcommand")
            ckpt_path = self.config[sub].get("ckpt_path") if sub else None
            if not ckpt_path or str(ckpt_path) in CKPT_PATH_KEYWORDS:
                return
            ckpt = load_checkpoint(ckpt_path, None, what="--ckpt_path")
            model = self.config[sub].get("model")
            class_path = str(model.get("class_path", "")) if model is not None else ""
            wanted = {"TokenizerModule": "tokenizer", "ARModule": "ar"}.get(class_path.rsplit(".", 1)[-1])
            kind = checkpoint_kind(ckpt)
            saved_class = str((ckpt.get("hyper_parameters") or {}).get("_class_path") or "")
            if (wanted is not None and kind != wanted) or (saved_class and class_path and saved_class != class_path):
                raise ConfigError(f"--ckpt_path {ckpt_path} is {describe(kind)}"
                                  f"{f' ({saved_class})' if saved_class else ''} but the config's model is "
                                  f"{class_path}; pass a checkpoint of that module or the config it was trained with")
            explicit = {k: model["init_args"][k] for k in _explicit_model_keys(argv)
                        if model is not None and model.get("init_args") is not None and k in model["init_args"]}
            super()._parse_ckpt_path()
            model = self.config[sub].get("model")
            for key, value in explicit.items():  # e.g. a tokenizer checkpoint that moved
                if model.get("dict_kwargs"):
                    model["dict_kwargs"].pop(key, None)
                model["init_args"][key] = value

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except Exception as err:  # noqa: BLE001 - a config that cannot be built is the user's to fix
                found = user_error(err)
                raise ConfigError(one_line(found if found is not None else _innermost(err))) from err

    try:
        ProjectCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            parser_kwargs={"parser_mode": "omegaconf+", "exit_on_error": False},
            save_config_kwargs={"overwrite": True},
        )
    except Exception as err:  # noqa: BLE001 - user errors become one line; anything else is re-raised
        found = user_error(err, parse=isinstance(err, ArgumentError))
        if found is None:
            raise
        return report(found)
    return 0


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
    return run_lightning(argv)


if __name__ == "__main__":
    sys.exit(main())
