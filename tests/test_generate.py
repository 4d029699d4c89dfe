"""`main.py generate` on a tiny checkpoint: GenEval layout read back by the scorer, resume,
atomic writes, edits and answers; bad input (prompt file format naming the line, unknown sampling
key, aspect ratio outside the family) -> exit 2 with one line naming the value."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_checkpoints import write_tiny_checkpoints
from PIL import Image

from commands import UsageError
from modules.common.errors import ConfigError
from commands.generate import read_prompt_file, run
from modules.ar.config import ARConfig
from modules.ar.model import ARDecoder
from modules.ar.sampler import save_generator

ROOT = Path(__file__).resolve().parents[1]
GENEVAL_LINES = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
    {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}],
     "prompt": "a photo of a red square"},
]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _prompts(tmp_path, lines, name="prompts.jsonl"):
    p = tmp_path / name
    p.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return p


def test_generate_geneval_layout_scored_and_resumed(ckpts, tmp_path):
    from evaluation.geneval import score_geneval

    out = tmp_path / "gen"
    args = dict(ckpt=str(ckpts / "ar.ckpt"), prompts=str(_prompts(tmp_path, GENEVAL_LINES)), out=str(out),
                samples=2, height=32, width=32, sampling={"seed": 3, "top_k": 10, "guidance": 2.0})
    res = run(**args)
    assert res == {"out": str(out), "generated": 2, "skipped": 0}
    for i, line in enumerate(GENEVAL_LINES):
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == line
        ims = [np.asarray(Image.open(folder / "samples" / f"{k:04d}.png")) for k in range(2)]
        assert all(im.shape == (32, 32, 3) for im in ims)
        assert (folder / "grid.png").is_file()
        assert not [p for p in folder.rglob(".*")]  # no temporary files left
    results = score_geneval(out, verbose=False)
    assert len(results.records) == 4 and set(results.task_counts) == {"single_object", "colors"}
    assert results.num_prompts == 2
    # resume: finished prompts are skipped, a prompt with a missing sample is redone identically
    before = (out / "00001" / "samples" / "0001.png").read_bytes()
    (out / "00001" / "samples" / "0001.png").unlink()
    res = run(**args)
    assert res["generated"] == 1 and res["skipped"] == 1
    assert (out / "00001" / "samples" / "0001.png").read_bytes() == before


def test_generate_aspect_ratios_edit_and_answers(ckpts, tmp_path):
    lines = [{"prompt": "a wide red circle", "height": 16, "width": 48}, {"prompt": "a circle"}]
    out = run(ckpt=str(ckpts / "ar.ckpt"), prompts=str(_prompts(tmp_path, lines)), out=str(tmp_path / "ar"),
              samples=1, height=32, width=32)
    assert out["generated"] == 2
    assert Image.open(tmp_path / "ar" / "00000" / "samples" / "0000.png").size == (48, 16)
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "src.png")
    run(ckpt=str(ckpts / "ar.ckpt"), task="edit", out=str(tmp_path / "ed"), samples=2,
        prompts=str(_prompts(tmp_path, [{"source": "src.png", "instruction": "make it blue"}], "ed.jsonl")))
    rows = [json.loads(x) for x in (tmp_path / "ed" / "edits.jsonl").read_text().splitlines()]
    assert rows[0]["index"] == 0 and len(rows[0]["samples"]) == 2 and Path(rows[0]["samples"][1]).is_file()
    run(ckpt=str(ckpts / "ar.ckpt"), task="i2t", out=str(tmp_path / "qa"), sampling={"max_text_tokens": 5},
        prompts=str(_prompts(tmp_path, ["src.png", "src.png"], "qa.txt")))
    rows = [json.loads(x) for x in (tmp_path / "qa" / "answers.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and all(isinstance(r["answer"], str) for r in rows)


def test_prompt_file_errors_name_the_line(tmp_path):
    bad = _prompts(tmp_path, [GENEVAL_LINES[0], "{not json"], "bad.jsonl")
    with pytest.raises(UsageError, match="line 2: not valid JSON"):
        read_prompt_file(bad)
    missing = _prompts(tmp_path, [GENEVAL_LINES[0], {"tag": "x"}], "missing.jsonl")
    with pytest.raises(UsageError, match="line 2: .*'prompt'"):
        read_prompt_file(missing)
    mixed = _prompts(tmp_path, ["a red circle", "", '{"prompt": "x"}'], "mixed.txt")
    with pytest.raises(UsageError, match="line 3: looks like JSON"):
        read_prompt_file(mixed)
    assert read_prompt_file(_prompts(tmp_path, ["a red circle", "two stars"], "ok.txt")) == [
        {"prompt": "a red circle"}, {"prompt": "two stars"}]


def test_cli_bad_inputs_exit_2_naming_the_value(ckpts, tmp_path, capsys):
    import main  # in-process: the same dispatch as `python main.py generate ...` (no interpreter start-up)

    good = _prompts(tmp_path, GENEVAL_LINES)
    wide = _prompts(tmp_path, [{"prompt": "x", "height": 8, "width": 64}], "wide.jsonl")
    (tmp_path / "s.yaml").write_text("guidance: 2.0\ntop_kk: 5\n")
    cases = [
        (["--prompts", str(_prompts(tmp_path, ["{oops"], "b.jsonl"))], "line 1"),
        (["--prompts", str(good), "--sampling", str(tmp_path / "s.yaml")], "top_kk"),
        (["--prompts", str(wide)], "outside the schedule family"),
    ]
    for extra, named in cases:
        code = main.main(["generate", "--ckpt", str(ckpts / "ar.ckpt"), "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        errs = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
        assert len(errs) == 1 and named in errs[0], err


def test_sampling_configs_load():
    from commands.generate import load_sampling

    for p in sorted((ROOT / "configs" / "sampling").glob("*.yaml")):
        cfg = load_sampling(str(p))
        assert cfg.step(0, 3).temperature >= 0, p


def test_understanding_exact_match_scoring():
    from evaluation.understanding import caption_groups, normalize, score_understanding, understanding_items

    items = understanding_items(12, seed=1, width=48, height=48)
    assert {it["kind"] for it in items} >= {"caption", "count", "color"}
    truth = {(id(it["image"]), it["question"]): it["answer"] for it in items}
    perfect = score_understanding(items, lambda ims, qs: [truth[(id(i), q)] for i, q in zip(ims, qs)])
    asked = [k for k, (_, n) in perfect["counts"].items() if n]
    assert perfect["overall"] == 1.0 and all(perfect[k] == 1.0 for k in asked)
    wrong = score_understanding(items, lambda ims, qs: ["purple dodecahedron" for _ in qs])
    assert wrong["overall"] == 0.0
    assert normalize("The  Red.") == "red" and normalize("3") == "three"
    assert caption_groups("a photo of two red circles and a blue star on a plain slate background") == {
        (2, "red", "circle"), (1, "blue", "star")}


def test_understanding_runs_the_ar_model(ckpts):
    from evaluation.understanding import score_understanding, understanding_items
    from modules.ar.generator import ARGenerator
    from modules.ar.sampler import load_generator
    from modules.tokenizer import load_tokenizer

    model, meta = load_generator(str(ckpts / "ar.ckpt"))
    tok = load_tokenizer(meta["tokenizer_ckpt"])
    items = understanding_items(2, seed=0, width=32, height=32)
    res = score_understanding(items, ARGenerator(model, tok).answer)
    assert len(res["records"]) == len(items) and 0.0 <= res["overall"] <= 1.0
    assert all(isinstance(r["prediction"], str) for r in res["records"])


def test_generate_reads_an_armodule_checkpoint(ckpts, tmp_path):
    import lightning

    from modules.ar.module import ARModule

    torch.manual_seed(1)
    mod = ARModule(preset="tiny", tokenizer_ckpt=str(ckpts / "tok.ckpt"))
    torch.save({"state_dict": mod.state_dict(), "hyper_parameters": dict(mod.hparams),
                "pytorch-lightning_version": lightning.__version__}, tmp_path / "armodule.ckpt")
    prompts = _prompts(tmp_path, ["a red circle"], "p.txt")
    res = run(ckpt=str(tmp_path / "armodule.ckpt"), prompts=str(prompts), out=str(tmp_path / "o"), samples=1,
              height=32, width=32)
    assert res["generated"] == 1 and (tmp_path / "o" / "00000" / "samples" / "0000.png").is_file()


def _tokenizer_ckpt(path, seed: int):
    import lightning

    from modules.tokenizer import TokenizerConfig, TokenizerModule

    torch.manual_seed(seed)
    cfg = TokenizerConfig(codebook_size=64, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, semantic_ch=8,
                          semantic_decoder_ch=8)
    tok = TokenizerModule(cfg, val_oracle=False, rfid_extractor=None)
    torch.save({"state_dict": tok.state_dict(), "hyper_parameters": dict(tok.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return tok


def test_generate_refuses_untrained_scale_counts(ckpts, tmp_path):
    """Trained at 32 px (patch 4: 8x8 grid, 8 scales): 48 px (12x12, 10 scales) is refused with one
    line naming both counts and the flag; the flag allows it; an untrained model is allowed."""
    from modules.ar.sampler import load_generator

    model, _ = load_generator(str(ckpts / "ar.ckpt"))
    save_generator(model, tmp_path / "trained.ckpt", tokenizer_ckpt=str(ckpts / "tok.ckpt"),
                   trained_scale_counts={8: 100})
    prompts = _prompts(tmp_path, ["a red circle"], "p.txt")
    args = dict(ckpt=str(tmp_path / "trained.ckpt"), prompts=str(prompts), samples=1, height=48, width=48)
    with pytest.raises(UsageError) as err:
        run(**args, out=str(tmp_path / "refused"))
    msg = str(err.value)
    assert "\n" not in msg and "48x48 px needs 10 scales" in msg and "scale counts 8 (32 px square)" in msg
    assert "--allow_untrained_scales" in msg and not (tmp_path / "refused").exists()
    assert run(**args, out=str(tmp_path / "allowed"), allow_untrained_scales=True)["generated"] == 1
    assert run(**{**args, "height": 32, "width": 32}, out=str(tmp_path / "trained"))["generated"] == 1
    assert load_generator(str(ckpts / "ar.ckpt"))[1]["trained_scale_counts"] is None  # untrained: allowed
    assert run(**{**args, "ckpt": str(ckpts / "ar.ckpt")}, out=str(tmp_path / "untrained"))["generated"] == 1


def test_generate_refuses_another_tokenizer(ckpts, tmp_path):
    """A tokenizer whose codebook is not the one the AR model trained with (e.g. retrained at the
    same path) is refused, naming the path and both fingerprints; a bf16 copy of the right codes
    passes the tolerance."""
    from modules.ar.sampler import code_fingerprint, load_generator, tokenizer_mismatch
    from modules.tokenizer import checkpoint_fingerprint

    other = _tokenizer_ckpt(tmp_path / "retrained.ckpt", seed=5)
    model, _ = load_generator(str(ckpts / "ar.ckpt"))
    prompts = _prompts(tmp_path, ["a red circle"], "p.txt")
    with pytest.raises(ConfigError) as err:  # main.py prints it as one line, exit 2
        run(ckpt=str(ckpts / "ar.ckpt"), prompts=str(prompts), out=str(tmp_path / "o"), samples=1, height=32,
            width=32, tokenizer_ckpt=str(tmp_path / "retrained.ckpt"))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "retrained.ckpt") in msg
    assert checkpoint_fingerprint(tmp_path / "retrained.ckpt") in msg and "--tokenizer_ckpt" in msg
    assert code_fingerprint(other.code_embeddings()) in msg and code_fingerprint(model.code_emb) in msg
    assert tokenizer_mismatch(model, model.code_emb.bfloat16()) is None
    assert tokenizer_mismatch(model, model.code_emb + 0.05) is not None
    assert "shape (32, 40)" in tokenizer_mismatch(model, model.code_emb[:32])


def test_sampler_checkpoint_without_rope_layout_reads_as_sectioned(ckpts, tmp_path):
    """Sampler checkpoints from before the layout was a config field were trained sectioned."""
    from modules.ar.sampler import load_generator

    raw = torch.load(ckpts / "ar.ckpt", weights_only=False)
    assert raw["ar_config"]["rope_layout"] == "alternating"
    assert load_generator(str(ckpts / "ar.ckpt"))[0].config.rope_layout == "alternating"
    del raw["ar_config"]["rope_layout"]
    torch.save(raw, tmp_path / "old.ckpt")
    assert load_generator(str(tmp_path / "old.ckpt"))[0].config.rope_layout == "sectioned"
