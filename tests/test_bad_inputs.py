"""A table of bad inputs across every command (project commands and the Lightning subcommands):
each exits with status 2 and prints exactly one line, `error: ...`, naming the offending value.
Run in-process through main.main (no subprocesses)."""
import json
from pathlib import Path

import pytest
import torch

from _tokenizer_data import write_raw_shards
from main import main
from test_ar_module import TINY, make_shards
from test_safe_checkpoints import tokenizer_ckpt

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "configs" / "experiment"
AR_CFG, TOK_CFG = str(EXP / "ar_shapes_t2i.yaml"), str(EXP / "tokenizer_shapes_stage1.yaml")


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Paths of valid inputs (bad ones are built from them per case)."""
    from modules.ar.module import ARModule
    from modules.ar.sampler import save_generator

    root = tmp_path_factory.mktemp("bad")
    write_raw_shards(root / "raw", [(32, 32)] * 4, samples_per_shard=4)
    make_shards(root / "pretok", side=2, n=8)
    tok = tokenizer_ckpt(root / "tok.ckpt")
    ar = ARModule(overrides={k: v for k, v in TINY.items() if k not in ("codebook_size", "code_dim")},
                  tokenizer_ckpt=tok)
    save_generator(ar.model, root / "ar.ckpt", tokenizer_ckpt=tok)
    torch.save({"state_dict": ar.state_dict(), "hyper_parameters": dict(ar.hparams)}, root / "armodule.ckpt")
    (root / "junk.ckpt").write_bytes(b"\x00garbage")
    (root / "prompts.txt").write_text("a red circle\n")
    (root / "empty.txt").write_text("\n")
    (root / "badjson.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (root / "height_abc.jsonl").write_text('{"prompt": "a red circle", "height": "abc"}\n')
    (root / "height_neg.jsonl").write_text('{"prompt": "a red circle", "height": -8}\n')
    (root / "noprompt.jsonl").write_text('{"text": "a red circle"}\n')
    for name, text in {"s_guidance": "guidance: high\n", "s_topk": "top_k: -3\n", "s_unknown": "guidanse: 2\n",
                       "s_topp": "top_p: 0\n", "s_temp": "temperature: [1.0, -1]\n", "s_list": "- 1\n- 2\n",
                       "s_sched": "guidance_schedule: cubic\n"}.items():
        (root / f"{name}.yaml").write_text(text)
    (root / "emptydir").mkdir()
    (root / "afile").write_text("x")
    return {k: str(v) for k, v in {
        "root": root, "raw": root / "raw", "pretok": root / "pretok", "tok": tok, "ar": root / "ar.ckpt",
        "armodule": root / "armodule.ckpt", "junk": root / "junk.ckpt", "prompts": root / "prompts.txt",
        "empty": root / "empty.txt", "badjson": root / "badjson.jsonl", "height_abc": root / "height_abc.jsonl",
        "height_neg": root / "height_neg.jsonl", "noprompt": root / "noprompt.jsonl", "emptydir": root / "emptydir",
        "afile": root / "afile", **{n: root / f"{n}.yaml" for n in ("s_guidance", "s_topk", "s_unknown", "s_topp",
                                                                      "s_temp", "s_list", "s_sched")}}.items()}


def gen(f, *extra, prompts="prompts"):
    return ["generate", "--ckpt", f["ar"], "--prompts", f[prompts], "--out", "gen", *extra]


def pretok(f, *extra):
    return ["pretokenize", "--raw", f["raw"], "--checkpoint", f["tok"], "--out", "pt", *extra]


AR_FIT = ["--trainer.accelerator=cpu", "--trainer.max_steps=1", "--trainer.logger=false"]


def ar(f, sub="fit", *extra, tok="null"):
    return [sub, "--config", AR_CFG, f"--model.init_args.tokenizer_ckpt={tok}", *AR_FIT,
            f"--data.init_args.train_dirs={{'64': '{f['pretok']}'}}", f"--data.init_args.val_dir={f['pretok']}",
            "--model.init_args.overrides={'n_layer': 1, 'n_embd': 32, 'n_head': 2, 'n_query_groups': 1, "
            "'intermediate_size': 64, 'codebook_size': 16, 'code_dim': 8}", "--model.init_args.preset=tiny",
            *extra]


def tok_fit(f, *extra):
    return ["fit", "--config", TOK_CFG, "--trainer.max_steps=1", "--trainer.logger=false",
            "--model.init_args.rfid_extractor=null", "--model.init_args.val_oracle=false",
            f"--data.init_args.train_dir={f['raw']}", f"--data.init_args.val_dir={f['raw']}", *extra]


# (case id, argv builder, substring the one line must contain)
CASES = [
    # world
    ("world-negative-count", lambda f: ["world", "--out", "w", "--num_samples", "-3"], "-3"),
    ("world-zero-width", lambda f: ["world", "--out", "w", "--width", "0"], "0"),
    ("world-unknown-colour", lambda f: ["world", "--out", "w", "--colors", "[red, magenta]"], "magenta"),
    ("world-unknown-kind", lambda f: ["world", "--out", "w", "--kind", "blob"], "kind"),
    ("world-count-not-int", lambda f: ["world", "--out", "w", "--num_samples", "abc"], "num_samples"),
    ("world-unknown-option", lambda f: ["world", "--out", "w", "--bogus", "1"], "bogus"),
    ("world-unwritable-out", lambda f: ["world", "--out", f["afile"] + "/w", "--num_samples", "2"], "afile"),
    ("world-missing-config", lambda f: ["world", "--config", "nope.yaml"], "nope.yaml"),
    # pretokenize
    ("pretok-missing-raw", lambda f: ["pretokenize", "--raw", "nope", "--checkpoint", f["tok"]], "nope"),
    ("pretok-missing-ckpt", lambda f: pretok(f, "--checkpoint", "nope.ckpt"), "nope.ckpt"),
    ("pretok-junk-ckpt", lambda f: pretok(f, "--checkpoint", f["junk"]), "junk.ckpt"),
    ("pretok-ar-ckpt", lambda f: pretok(f, "--checkpoint", f["ar"]), "AR checkpoint"),
    ("pretok-self-correct", lambda f: pretok(f, "--self_correct", "1.5"), "1.5"),
    ("pretok-topk", lambda f: pretok(f, "--topk", "0"), "topk"),
    ("pretok-variants", lambda f: pretok(f, "--variants", "0"), "variants"),
    ("pretok-batch", lambda f: pretok(f, "--batch_size", "-1"), "batch_size"),
    ("pretok-per-shard", lambda f: pretok(f, "--samples_per_shard", "0"), "samples_per_shard"),
    ("pretok-resize", lambda f: pretok(f, "--resize_to", "-64"), "-64"),
    ("pretok-device-cuda99", lambda f: pretok(f, "--device", "cuda:99"), "cuda:99"),
    ("pretok-device-bogus", lambda f: pretok(f, "--device", "banana"), "banana"),
    ("pretok-unwritable-out", lambda f: pretok(f, "--out", f["afile"] + "/o"), "afile"),
    # generate
    ("gen-missing-ckpt", lambda f: ["generate", "--ckpt", "nope.ckpt", "--prompts", f["prompts"]], "nope.ckpt"),
    ("gen-tokenizer-as-ar", lambda f: ["generate", "--ckpt", f["tok"], "--prompts", f["prompts"]], "tokenizer checkpoint"),
    ("gen-junk-ckpt", lambda f: ["generate", "--ckpt", f["junk"], "--prompts", f["prompts"]], "junk.ckpt"),
    ("gen-ar-as-tokenizer", lambda f: gen(f, "--tokenizer_ckpt", f["ar"]), "expected a tokenizer"),
    ("gen-missing-prompts", lambda f: ["generate", "--ckpt", f["ar"], "--prompts", "nope.txt"], "nope.txt"),
    ("gen-empty-prompts", lambda f: gen(f, prompts="empty"), "empty"),
    ("gen-bad-jsonl", lambda f: gen(f, prompts="badjson"), "line 2"),
    ("gen-no-prompt-key", lambda f: gen(f, prompts="noprompt"), "'prompt'"),
    ("gen-height-abc", lambda f: gen(f, prompts="height_abc"), "'abc'"),
    ("gen-height-negative", lambda f: gen(f, prompts="height_neg"), "-8"),
    ("gen-guidance-string", lambda f: gen(f, "--sampling", f["s_guidance"]), "'high'"),
    ("gen-topk-negative", lambda f: gen(f, "--sampling", f["s_topk"]), "-3"),
    ("gen-sampling-unknown-key", lambda f: gen(f, "--sampling", f["s_unknown"]), "guidanse"),
    ("gen-topp-zero", lambda f: gen(f, "--sampling", f["s_topp"]), "top_p"),
    ("gen-temperature-list", lambda f: gen(f, "--sampling", f["s_temp"]), "temperature"),
    ("gen-sampling-not-mapping", lambda f: gen(f, "--sampling", f["s_list"]), "mapping"),
    ("gen-guidance-schedule", lambda f: gen(f, "--sampling", f["s_sched"]), "cubic"),
    ("gen-missing-sampling", lambda f: gen(f, "--sampling", "nope.yaml"), "nope.yaml"),
    ("gen-samples-zero", lambda f: gen(f, "--samples", "0"), "0"),
    ("gen-batch-negative", lambda f: gen(f, "--batch_size", "-2"), "-2"),
    ("gen-device", lambda f: gen(f, "--device", "cuda:99"), "cuda:99"),
    ("gen-task", lambda f: gen(f, "--task", "t2v"), "task"),
    ("gen-limit", lambda f: gen(f, "--limit", "0"), "limit"),
    # report / rescore / bench / sweep / quickstart
    ("report-missing", lambda f: ["report", "nope_run"], "nope_run"),
    ("rescore-missing", lambda f: ["rescore", "nope_run"], "nope_run"),
    ("rescore-empty", lambda f: ["rescore", f["emptydir"]], "emptydir"),
    ("bench-unknown", lambda f: ["bench", "--what", "warp"], "warp"),
    ("bench-device", lambda f: ["bench", "--what", "sampling", "--device", "cuda:99"], "cuda:99"),
    ("sweep-no-points", lambda f: ["sweep", "--name", "x", "--dry_run", "true"], "no points"),
    ("sweep-bad-grid", lambda f: ["sweep", "--grid", "{model.init_args.lr: 3}", "--dry_run", "true"], "grid"),
    ("quickstart-size", lambda f: ["quickstart", "--out", "q", "--size", "huge"], "huge"),
    # Lightning subcommands
    ("fit-missing-config", lambda f: ["fit", "--config", "nope.yaml"], "nope.yaml"),
    ("fit-steps-not-int", lambda f: ar(f, "fit", "--trainer.max_steps=abc"), "max_steps"),
    ("fit-lr-not-float", lambda f: ar(f, "fit", "--model.init_args.lr=abc"), "lr"),
    ("fit-missing-tokenizer", lambda f: ar(f, tok="nope/tok.ckpt"), "nope/tok.ckpt"),
    ("fit-tokenizer-is-ar", lambda f: ar(f, tok=f["ar"]), "expected a tokenizer"),
    ("fit-batch-negative", lambda f: ar(f, "fit", "--data.init_args.batch_size=-4"), "batch_size"),
    ("fit-missing-shards", lambda f: ar(f, "fit", "--data.init_args.train_dirs={'64': 'nope_dir'}"), "nope_dir"),
    ("fit-too-few-samples", lambda f: ar(f, "fit", "--data.init_args.batch_size=64"), "fewer than one batch"),
    ("fit-accelerator", lambda f: ar(f, "fit", "--trainer.accelerator=tpu"), "torch_xla"),
    ("fit-unknown-class", lambda f: ar(f, "fit", "--model.class_path=modules.nope.Nope"), "Nope"),
    ("fit-tok-stage", lambda f: tok_fit(f, "--model.init_args.stage=bogus"), "stage"),
    ("fit-tok-init-is-ar", lambda f: tok_fit(f, f"--model.init_args.init_ckpt={f['armodule']}"), "AR checkpoint"),
    ("fit-tok-multiple-of", lambda f: tok_fit(f, "--data.init_args.multiple_of=0"), "multiple_of"),
    ("fit-tok-missing-raw", lambda f: tok_fit(f, "--data.init_args.train_dir=nope_raw"), "nope_raw"),
    ("validate-ckpt-missing", lambda f: ar(f, "validate", "--ckpt_path=nope.ckpt"), "nope.ckpt"),
    ("validate-ckpt-wrong-kind", lambda f: ar(f, "validate", f"--ckpt_path={f['tok']}"), "tokenizer checkpoint"),
    ("test-not-offered", lambda f: ar(f, "test", f"--ckpt_path={f['junk']}"), "main.py validate"),
]


@pytest.mark.parametrize("build,named", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(build, named, f, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(build(f))
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert named in lines[0], lines[0]


def test_table_size():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1]({"root": "", **{k: "x" for k in ("raw", "pretok", "tok", "ar", "armodule", "junk", "prompts",
                                                   "afile", "emptydir", "empty", "badjson", "height_abc",
                                                   "height_neg", "noprompt", "s_guidance", "s_topk",
                                                   "s_unknown", "s_topp", "s_temp", "s_list", "s_sched")}})[0]
            for c in CASES} >= {"world", "pretokenize", "generate", "report", "rescore", "bench", "sweep",
                                "quickstart", "fit", "validate", "test"}
