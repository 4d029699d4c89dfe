"""main.py: the help lists every command; user mistakes exit 2 with one line naming the value."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _main(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_lightning_and_project_commands():
    result = _main("--help")
    assert result.returncode == 0, result.stderr
    for name in ("fit", "validate", "test", "predict", "world"):
        assert name in result.stdout


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
