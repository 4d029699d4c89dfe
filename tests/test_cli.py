"""main.py: the help lists every command; user mistakes exit 2 with one line naming the value."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _main(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_only_commands_that_exist():
    result = _main("--help")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines()[2:] if line[:1].isalpha()]
    assert listed[:2] == ["fit", "validate"] and "world" in listed and "sweep" in listed
    for absent in ("test", "predict", "evaluate"):
        assert absent not in listed
    assert "GRPO" not in result.stdout and "refiner" not in result.stdout


def test_lightning_commands_not_offered_say_what_to_run_instead():
    for name, instead in (("test", "main.py validate"), ("predict", "main.py generate")):
        result = _main(name, "--config", "configs/experiment/ar_shapes_t2i.yaml")
        assert result.returncode == 2 and instead in result.stderr, result.stderr


def test_a_missing_composed_file_exits_2_naming_it(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("compose: [../model/nope.yaml]\nseed_everything: 1\n")
    result = _main("fit", "--config", str(config))
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "'../model/nope.yaml' not found" in lines[0] and "relative to the file" in lines[0]


def test_unknown_command_exits_2():
    result = _main("frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr


def test_world_bad_inputs_exit_2_naming_the_value(tmp_path):
    cases = [
        (["--colors", "[red, magenta]"], "magenta"),
        (["--shapes", "[circle, blob]"], "blob"),
        (["--num_samples", "-3"], "-3"),
        (["--width", "0"], "0"),
    ]
    for extra, named in cases:
        result = _main("world", "--out", str(tmp_path / "w"), *extra)
        assert result.returncode == 2, (extra, result.stdout, result.stderr)
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and named in lines[0], result.stderr


def test_world_writes_shards_from_a_config_file(tmp_path):
    config = tmp_path / "world.yaml"
    config.write_text(f"kind: scenes\nout: {tmp_path / 'scenes'}\nnum_samples: 6\nsamples_per_shard: 4\n")
    result = _main("world", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "scenes").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


@pytest.mark.slow
def test_fit_prints_progress_not_library_warnings(tmp_path):
    """A tokenizer stage-1 fit of 4 steps: its output is the progress bar, not Lightning's
    warnings, tips and info lines (commands.lightning_cli.quiet_lightning)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _tokenizer_data import write_raw_shards

    write_raw_shards(tmp_path / "data/shapes/tok64m16/train", [(64, 64)] * 8, seed=0)
    write_raw_shards(tmp_path / "data/shapes/tok64m16/val", [(64, 64)] * 4, seed=1)
    result = _main("fit", "--config", str(ROOT / "configs/experiment/tokenizer_shapes_stage1.yaml"),
                   "--trainer.max_steps=4", "--data.init_args.batch_size=4", "--data.init_args.val_batch_size=4",
                   "--trainer.limit_val_batches=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for chatter in ("Warning", "warn", "Tip", "GPU available", "Seed set", "does not have many workers",
                    "exists and is not empty", "LightningCLI's args"):
        assert chatter not in output, output
    assert "Epoch" in output and (tmp_path / "runs/tokenizer_shapes/stage1/last.ckpt").is_file()
