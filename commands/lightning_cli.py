"""The project's Lightning CLI (`main.py fit|validate ...`), its config composition, and the one
place where library chatter is silenced.

Composition: an experiment YAML may start with `compose: [a.yaml, b.yaml, ...]` (paths relative to
that file). `expand_compose` turns `--config exp.yaml` into `--config a.yaml --config b.yaml
--config exp.yaml`, left to right, recursively, before jsonargparse parses anything. So a
composed file means exactly what the same layers given as several `--config` arguments mean:
jsonargparse's own merge (mappings merge key by key; a list replaces the earlier list, merging
items of the same class at the same position; `callbacks+:` appends). jsonargparse's native
`config:` key inside a YAML is not used: with the Lightning subcommand parsers it loads some
nested mappings but silently resets others (a `trainer:` mapping after it drops the included
trainer settings).

Quiet runs (`quiet_lightning`): what can be switched off by configuration is (the args warning:
`ProjectCLI.parse_arguments` does not emit it; Lightning's info lines: its loggers at WARNING); the
rest are warnings that say nothing actionable for these configs, filtered here by message.
"""
from __future__ import annotations

import importlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from commands import ConfigError, UsageError, innermost, one_line, user_error

# Modules whose LightningModules / LightningDataModules / callbacks configs may name by short
# class name (imported before parsing; listed here rather than by the package __init__s, so that
# `import shapes` stays light).
REGISTERED_CLASS_MODULES = (
    "datamodules.raw", "datamodules.pretokenized_dm",
    "modules.tokenizer", "modules.ar.module", "modules.rl.module", "datamodules.prompts",
    "callbacks.scale_dropping", "callbacks.curriculum", "callbacks.evaluation", "callbacks.ema",
)
COMPOSE_KEY = "compose"

# Warnings that carry no action for this project's configs (matched at the start of the message).
QUIET_WARNINGS = (
    r"The '\w+_dataloader' does not have many workers",   # num_workers: 0 is deliberate (2-core CPU)
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"Checkpoint directory .* exists and is not empty",     # save_last overwrites last.ckpt on purpose
    r"Experiment logs directory .* exists and is not empty",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",       # inside Lightning itself
    r"You have overridden `transfer_batch_to_device` in `LightningModule`",   # ARModule does, on purpose
)
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed")


def quiet_lightning() -> None:
    """Silence library chatter for `main.py` runs: Lightning's info lines (GPU/TPU available,
    seed set, tips) and the warnings in QUIET_WARNINGS. Errors and other warnings still show."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def register_classes() -> None:
    """Import the modules whose classes configs name by short name (subclass mode needs them)."""
    for name in REGISTERED_CLASS_MODULES:
        importlib.import_module(name)


def _layers(path: str, chain: tuple[Path, ...]) -> list[str]:
    file = Path(path)
    if not file.is_file():
        return ["--config", path]  # not a file (a YAML string, or missing): jsonargparse says so
    raw = yaml.safe_load(file.read_text())
    compose = raw.get(COMPOSE_KEY) if isinstance(raw, dict) else None
    if not compose:
        return ["--config", path]
    if file.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, file.resolve()))
        raise UsageError(f"config {path} composes itself ({cycle}); remove one of the `compose:` entries")
    layers: list[str] = []
    for entry in [compose] if isinstance(compose, str) else compose:
        part = file.parent / entry
        if not part.is_file():
            raise UsageError(f"config {path}: compose entry {entry!r} not found at {part} "
                             "(compose paths are relative to the file that lists them)")
        layers += _layers(str(part), (*chain, file.resolve()))
    # `--compose=null` after the file: the saved config.yaml is already the composed result.
    return [*layers, "--config", path, f"--{COMPOSE_KEY}=null"]


def expand_compose(argv: list[str]) -> list[str]:
    """Replace every `--config FILE` whose YAML has a `compose:` list by one `--config` per
    composed file (recursively, relative to FILE), then FILE itself."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            out += _layers(argv[i + 1], ())
            i += 2
        elif arg.startswith("--config="):
            out += _layers(arg.split("=", 1)[1], ())
            i += 1
        else:
            out.append(arg)
            i += 1
    return out


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


class ProjectCLI(LightningCLI):
    """LightningCLI in subclass mode for model and datamodule, with `compose:` expansion and the
    `omegaconf+` parser mode (`${...}` resolved after every layer is merged). The progress bar is
    Lightning's own (its RichProgressBar, rich being installed) unless a config turns it off."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True, **kwargs: Any):
        register_classes()
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf+"})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(f"--{COMPOSE_KEY}", type=Optional[Union[str, list[str]]], default=None,
                            help="Config files this one is layered on (relative to it), expanded before parsing.")

    def parse_arguments(self, parser, args) -> None:
        # (LightningCLI's own version warns whenever args are given while sys.argv is not empty,
        # which is always the case under main.py.)
        self._argv = expand_compose(list(sys.argv[1:] if args is None else args))
        self.config = parser.parse_args(self._argv)

    def _parse_ckpt_path(self) -> None:
        """`--ckpt_path` loaded safely (weights only) and checked against the configured module;
        explicit `--model.*` values win over the checkpoint's hyper-parameters (Lightning's own
        version replaces the whole model config with them, so a moved tokenizer could not be
        pointed to)."""
        from modules.common.checkpoints import checkpoint_kind, describe, load_checkpoint

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
        # an RL policy (modules/rl GRPOModule) is saved as ARModule weights: scored with the AR config's settings
        rl_policy = wanted == "ar" and kind == "ar" and saved_class.endswith(".GRPOModule")
        if not rl_policy and ((wanted is not None and kind != wanted)
                              or (saved_class and class_path and saved_class != class_path)):
            raise ConfigError(f"--ckpt_path {ckpt_path} is {describe(kind)}"
                              f"{f' ({saved_class})' if saved_class else ''} but the config's model is "
                              f"{class_path}; pass a checkpoint of that module or the config it was trained with")
        if rl_policy:   # keep the config's ARModule arguments (the checkpoint's are GRPOModule's)
            return
        explicit = {k: model["init_args"][k] for k in _explicit_model_keys(getattr(self, "_argv", []))
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
            raise ConfigError(one_line(found if found is not None else innermost(err))) from err


class _Parsed(Exception):
    def __init__(self, config):
        super().__init__("parsed")
        self.config = config


class _ParseOnly(ProjectCLI):
    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(self.config)


# jsonargparse's union-type boilerplate around the one line that says what is wrong
_BOILERPLATE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:",
                "- Expected a <class 'NoneType'>", "Given value type:", "Given value:")


def _compact(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines()]
    return " ".join(line.removeprefix("- ") for line in lines if line and not line.startswith(_BOILERPLATE))


def parse_config(args: list[str]) -> dict[str, Any]:
    """The merged, validated config that `main.py <args>` would run with (nothing instantiated),
    as plain dicts; args start with the subcommand (`["fit", "--config", ...]`). A config that
    does not parse raises UsageError with jsonargparse's message."""
    try:
        _ParseOnly(args, parser_kwargs={"parser_mode": "omegaconf+", "exit_on_error": False,
                                        **{cmd: {"exit_on_error": False} for cmd in LightningCLI.subcommands()}})
    except _Parsed as parsed:
        config = parsed.config[parsed.config["subcommand"]]
        return config.clone().as_dict()
    except Exception as err:  # jsonargparse.ArgumentError and friends
        if isinstance(err, UsageError):
            raise
        raise UsageError(_compact(str(err))) from err
    raise AssertionError("unreachable: _ParseOnly always raises")
