"""`main.py sweep`: grid/list expansion, key and type validation by the Lightning CLI's own parser
before anything runs, a failing point that does not stop the sweep, metrics collection and
resuming. A tiny fake experiment script stands in for `main.py fit` (the command template is
configurable); the base config names small classes from tests/_sweep_fakes.py."""
import json
import textwrap
from pathlib import Path

import pytest
import yaml

import main
from commands import UsageError
from commands.sweep import check_key, cli_value, expand_points

FAKE = textwrap.dedent('''
    import json, sys, yaml, pathlib
    args = sys.argv[1:]
    out = pathlib.Path(next(a.split("=", 1)[1] for a in args if a.startswith("--out=")))
    config = {}
    for i, a in enumerate(args):
        if a == "--config":
            config.update(yaml.safe_load(open(args[i + 1])))
    over = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a and not a.startswith("--out="))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "calls.txt", "a") as f:
        f.write("x")
    if yaml.safe_load(over.get("model.init_args.fail", "false")):
        print("boom: this point is configured to fail", file=sys.stderr)
        sys.exit(3)
    lr, width = float(over["model.init_args.lr"]), int(over["model.init_args.width"])
    logs = out / "lightning_logs" / "version_0"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "metrics.csv").write_text("step,train/loss,val/score\\n0,2.0,\\n10,1.5,\\n10,,%s\\n" % (lr * width))
    (out / "metrics.json").write_text(json.dumps({"geneval": {"overall": lr * width}, "base_seed": config["seed_everything"]}))
''')


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "fake_fit.py").write_text(FAKE)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {"seed_everything": 7,
         "model": {"class_path": "_sweep_fakes.FakeModule", "init_args": {"lr": 0.1, "width": 8, "fail": False}},
         "data": {"class_path": "_sweep_fakes.FakeData"},
         "trainer": {"max_steps": 10, "default_root_dir": "runs/shared",
                     "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                "init_args": {"save_dir": "runs/shared"}},
                     "callbacks": [{"class_path": "_sweep_fakes.EveryN", "init_args": {"every": 5}},
                                   {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                    "init_args": {"dirpath": "runs/shared"}}]}}))
    return tmp_path


def write_sweep(tmp_path, **body):
    sweep = {"name": "t", "base": [str(tmp_path / "base.yaml")], "out_dir": str(tmp_path / "out"),
             "command": ["{python}", str(tmp_path / "fake_fit.py"), "--out={run_dir}"], **body}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_grid_and_list_expansion():
    points = expand_points({"a.x": [1, 2], "b.y": ["p", "q", "r"]}, [{"name": "extra", "a.x": 9}, {"a.x": 0.5}])
    assert [o for _, o in points[:6]] == [{"a.x": 1, "b.y": "p"}, {"a.x": 1, "b.y": "q"}, {"a.x": 1, "b.y": "r"},
                                          {"a.x": 2, "b.y": "p"}, {"a.x": 2, "b.y": "q"}, {"a.x": 2, "b.y": "r"}]
    assert points[0][0] == "000_x=1_y=p" and points[6] == ("006_extra", {"a.x": 9})
    assert points[7] == ("007_x=0.5", {"a.x": 0.5})
    assert cli_value(True) == "true" and cli_value(None) == "null" and cli_value([1, 2]) == "[1, 2]"
    with pytest.raises(UsageError, match="non-empty list"):
        expand_points({"a.x": 3}, None)


def test_unknown_key_is_rejected_before_running(setup, capsys):
    from commands.sweep import load_base

    config = load_base([str(setup / "base.yaml")])
    check_key(config, "trainer.callbacks.0.init_args.every", "base.yaml")      # list index works
    with pytest.raises(UsageError, match="did you mean 'model.init_args.lr'"):
        check_key(config, "model.init_args.lrr", "base.yaml")
    path = write_sweep(setup, grid={"model.init_args.lr": [0.1], "model.init_args.depth": [2, 4]})
    assert main.main(["sweep", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "'model.init_args.depth' does not exist in the base config" in err and "base.yaml" in err
    assert not (setup / "out").exists()


def test_sweep_survives_failure_collects_metrics_and_resumes(setup):
    path = write_sweep(setup, grid={"model.init_args.lr": [0.1, 0.2], "model.init_args.width": [8, 16]},
                       list=[{"name": "broken", "model.init_args.fail": True}])
    assert main.main(["sweep", "--config", path]) == 0
    record = json.loads((setup / "out" / "sweep.json").read_text())
    assert [p["status"] for p in record["points"]] == ["done"] * 4 + ["failed"]
    good = {p["dir"]: p for p in record["points"] if p["status"] == "done"}
    assert good["003_lr=0.2_width=16"]["metrics"]["json"]["geneval"]["overall"] == pytest.approx(3.2)
    assert good["003_lr=0.2_width=16"]["metrics"]["json"]["base_seed"] == 7          # base config was passed
    assert good["000_lr=0.1_width=8"]["metrics"]["csv"] == {"step": 10.0, "train/loss": 1.5, "val/score": 0.8}
    broken = record["points"][4]
    assert broken["dir"] == "004_broken" and "exit status 3" in broken["error"] and "boom" in broken["error"]
    run0 = setup / "out" / "000_lr=0.1_width=8"
    status = json.loads((run0 / "status.json").read_text())
    assert status["wall_s"] > 0 and status["overrides"] == {"model.init_args.lr": 0.1, "model.init_args.width": 8}
    # outputs redirected into the point's folder: flags for plain keys, a generated config for list items
    assert f"--trainer.logger.init_args.save_dir={run0}" in status["command"]
    assert f"--trainer.default_root_dir={run0}" in status["command"]
    point = yaml.safe_load((run0 / "sweep_point.yaml").read_text())
    assert point["trainer"]["callbacks"][1]["init_args"]["dirpath"] == str(run0)
    assert point["trainer"]["callbacks"][0] == {"class_path": "_sweep_fakes.EveryN", "init_args": {"every": 5}}
    assert list(point) == ["trainer"] and list(point["trainer"]) == ["callbacks"]   # the list alone
    at = status["command"].index(str(run0 / "sweep_point.yaml"))
    assert status["command"][at - 1] == "--config" and status["command"][at - 2] == str(setup / "base.yaml")

    # Resume: finished points are skipped, the failed one is retried (or kept with retry_failed false).
    assert main.main(["sweep", "--config", path]) == 0
    calls = lambda d: (setup / "out" / d / "calls.txt").read_text()
    assert calls("000_lr=0.1_width=8") == "x" and calls("004_broken") == "xx"
    assert main.main(["sweep", "--config", path, "--retry_failed", "false"]) == 0
    assert calls("004_broken") == "xx"
    assert len(json.loads((setup / "out" / "sweep.json").read_text())["points"]) == 5


def test_a_value_the_parser_rejects_stops_the_sweep_before_running(setup, capsys):
    """Types are checked by the Lightning CLI's parser, as `main.py fit` would check them."""
    path = write_sweep(setup, list=[{"name": "ok", "model.init_args.width": 16},
                                    {"name": "bad", "model.init_args.width": "wide"}])
    assert main.main(["sweep", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "sweep point 001_bad does not parse" in err and "wide" in err
    assert not (setup / "out").exists()


def test_ablations_sweep_points_mean_what_fit_would_run(capsys):
    """The shipped ablation sweep: NF's default (two seeds), each factor off alone, accumulated with
    and without self-correction, on the default quickstart's AR recipe, scored where it trained;
    each point parsed by the CLI's parser holds its factors."""
    from commands.lightning_cli import parse_config
    from commands.sweep import load_base, point_args

    root = Path(main.__file__).parent
    sweep = yaml.safe_load((root / "configs/sweeps/ablations.yaml").read_text())
    points = expand_points(sweep.get("grid"), sweep.get("list"))
    assert [n for n, _ in points] == ["000_nf_default", "001_nf_default_seed1", "002_no_reweighting",
                                      "003_no_self_correction", "004_accumulated",
                                      "005_accumulated_no_self_correction"]
    base = [str(root / b) for b in sweep["base"]]
    config = load_base(base)
    from commands.quickstart import Sizes

    quickstart = Sizes.named("default")
    factors = {}
    for name, overrides in points:
        parsed = parse_config(["fit", *point_args(base, {**sweep["fixed"], **overrides}, config, None)])
        args = parsed["model"]["init_args"]
        factors[name] = (args["alpha"], args["self_correct"], args["overrides"]["visual_inputs"], args["text_tokenizer"],
                         parsed["seed_everything"])
        # every point is the quickstart's AR model, all at one step count (the quickstart's own is
        # set by its time budget), scored once, at the last step
        assert {k: args["overrides"][k] for k in quickstart.ar_model} == quickstart.ar_model, name
        bench = next(c for c in parsed["trainer"]["callbacks"] if c["class_path"].endswith("BenchmarkCallback"))
        assert parsed["trainer"]["max_steps"] == bench["init_args"]["every_n_steps"] == 2400, name
    assert factors == {"000_nf_default": (0.9, True, "residual", "shapes-words", 0),
                       "001_nf_default_seed1": (0.9, True, "residual", "shapes-words", 1),
                       "002_no_reweighting": (0.0, True, "residual", "shapes-words", 0),
                       "003_no_self_correction": (0.9, False, "residual", "shapes-words", 0),
                       "004_accumulated": (0.9, True, "accumulated", "shapes-words", 0),
                       "005_accumulated_no_self_correction": (0.9, False, "accumulated", "shapes-words", 0)}
    # the sweep's own overlay: one resolution, the suite once at max_steps, quickstart data
    trainer = config["trainer"]
    (curriculum,) = [c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("ResolutionCurriculum")]
    assert [(p["at_step"], str(p["phase"])) for p in curriculum["phases"]] == [(0, "64")]
    bench = next(c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("BenchmarkCallback"))
    assert bench["every_n_steps"] == trainer["max_steps"] == sweep["fixed"]["trainer.max_steps"]
    # scored at the resolution the points train at (64 px: the "64" phase), like the quickstart
    assert (bench["fit_suite"]["width"], bench["fit_suite"]["height"]) == (64, 64)
