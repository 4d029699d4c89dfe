"""Checkpoints from user paths load with weights_only=True: a crafted pickle reaching any user path
(generate --ckpt, pretokenize --checkpoint, tokenizer_ckpt, init_ckpt, --ckpt_path) never runs
(its marker file is never created) and the command exits 2 with one line; a checkpoint of
another kind is named as such."""
from pathlib import Path

import lightning
import pytest
import torch

from _tokenizer_data import tiny_config, write_raw_shards
from main import main
from modules.common.checkpoints import checkpoint_kind, load_checkpoint
from modules.common.errors import ConfigError
from modules.tokenizer import TokenizerModule, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "configs" / "experiment"


class Payload:
    """Unpickling this creates `marker` (what a malicious checkpoint would do with os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path: Path, marker: Path) -> str:
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(marker)},
                "pytorch-lightning_version": lightning.__version__}, path)
    return str(path)


def tokenizer_ckpt(path: Path) -> str:
    torch.manual_seed(0)
    m = TokenizerModule(tokenizer=tiny_config(), stage="joint", val_oracle=False, rfid_extractor=None)
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    write_raw_shards(root / "raw", [(32, 32)] * 2, samples_per_shard=2)
    (root / "prompts.txt").write_text("a red circle\n")
    return root


def one_error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


PATHS = {
    "generate --ckpt": lambda r, b: ["generate", "--ckpt", b, "--prompts", str(r / "prompts.txt"), "--out",
                                     str(r / "gen")],
    "pretokenize --checkpoint": lambda r, b: ["pretokenize", "--raw", str(r / "raw"), "--checkpoint", b,
                                              "--out", str(r / "pretok")],
    "AR tokenizer_ckpt": lambda r, b: ["fit", "--config", str(EXP / "ar_shapes_t2i.yaml"),
                                       f"--model.init_args.tokenizer_ckpt={b}", "--trainer.accelerator=cpu"],
    "tokenizer init_ckpt": lambda r, b: ["fit", "--config", str(EXP / "tokenizer_shapes_stage2.yaml"),
                                         f"--model.init_args.init_ckpt={b}", "--model.init_args.rfid_extractor=null",
                                         "--model.init_args.val_oracle=false"],
    "validate --ckpt_path": lambda r, b: ["validate", "--config", str(EXP / "ar_shapes_t2i.yaml"),
                                          "--model.init_args.tokenizer_ckpt=null", "--trainer.accelerator=cpu",
                                          f"--ckpt_path={b}"],
}


@pytest.mark.parametrize("name", list(PATHS))
def test_crafted_pickle_never_runs(name, files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    bad = crafted(tmp_path / "evil.ckpt", marker)
    assert main(PATHS[name](files, bad)) == 2
    assert not marker.exists()
    line = one_error_line(capsys)
    assert "evil.ckpt" in line and "refused" in line and "io.open" in line


def test_the_payload_does_run_when_unpickled(tmp_path):
    """The test's payload is real: loading it the unsafe way creates the marker."""
    marker = tmp_path / "PWNED"
    torch.load(crafted(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()


def test_wrong_kind_is_one_line_naming_path_kind_and_expectation(files, tmp_path, monkeypatch, capsys):
    tok = tokenizer_ckpt(tmp_path / "tok.ckpt")
    assert checkpoint_kind(torch.load(tok, weights_only=True)) == "tokenizer"
    with pytest.raises(ConfigError, match=r"AR checkpoint .*tok.ckpt is a tokenizer checkpoint .*expected an AR"):
        load_checkpoint(tok, "ar", what="AR checkpoint")
    assert load_tokenizer(tok).codebook_size == 256  # the safe path still loads the project's own
    monkeypatch.chdir(tmp_path)
    assert main(PATHS["generate --ckpt"](files, tok)) == 2
    assert "is a tokenizer checkpoint" in one_error_line(capsys)
    assert main(PATHS["validate --ckpt_path"](files, tok)) == 2
    line = one_error_line(capsys)
    assert "--ckpt_path" in line and "tokenizer checkpoint" in line and "ARModule" in line
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    assert main(PATHS["pretokenize --checkpoint"](files, str(tmp_path / "junk.ckpt"))) == 2
    assert "junk.ckpt is not a readable PyTorch checkpoint" in one_error_line(capsys)


def test_init_ckpt_of_another_kind_fails_clearly(tmp_path):
    from test_ar_module import TINY
    from modules.ar.module import ARModule

    ar = tmp_path / "ar.ckpt"
    m = ARModule(overrides=TINY)
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, ar)
    with pytest.raises(ConfigError, match=r"init_ckpt .*ar.ckpt is an AR checkpoint .*expected a tokenizer"):
        TokenizerModule(tokenizer=tiny_config(), stage="joint", init_ckpt=str(ar), val_oracle=False,
                        rfid_extractor=None)
    other = tmp_path / "other.ckpt"  # a tokenizer-like state of nothing this tokenizer has
    torch.save({"state_dict": {"tokenizer.nothing.weight": torch.zeros(1)}}, other)
    with pytest.raises(ConfigError, match="shares no tensor with this tokenizer"):
        TokenizerModule(tokenizer=tiny_config(), stage="joint", init_ckpt=str(other), val_oracle=False,
                        rfid_extractor=None)


def test_ckpt_path_keeps_an_explicit_tokenizer_override(tmp_path, monkeypatch, capsys):
    """An AR checkpoint whose tokenizer moved: `--model.init_args.tokenizer_ckpt` given on the
    command line wins over the path saved in the checkpoint (Lightning would drop it)."""
    from test_ar_module import TINY, make_shards
    from modules.ar.module import ARModule
    from modules.tokenizer import checkpoint_fingerprint

    tok = tokenizer_ckpt(tmp_path / "tok.ckpt")
    ar = ARModule(overrides={k: v for k, v in TINY.items() if k not in ("codebook_size", "code_dim")},
                  tokenizer_ckpt=tok)
    hp = {**dict(ar.hparams), "_class_path": "modules.ar.module.ARModule", "tokenizer_ckpt": "/moved/away/tok.ckpt"}
    ckpt = tmp_path / "ar.ckpt"
    torch.save({"state_dict": ar.state_dict(), "hyper_parameters": hp,
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    val = make_shards(tmp_path / "val", side=2, n=4, codebook=256, fingerprint=checkpoint_fingerprint(tok))
    monkeypatch.chdir(tmp_path)
    args = ["validate", "--config", str(EXP / "ar_shapes_t2i.yaml"), "--trainer.accelerator=cpu",
            "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.limit_val_batches=1",
            f"--data.init_args.val_dir={val}", "--data.init_args.val_batch_size=2", f"--ckpt_path={ckpt}"]
    assert main(args) == 2
    assert "/moved/away/tok.ckpt" in one_error_line(capsys)  # the checkpoint's own path is used ...
    assert main([*args, f"--model.init_args.tokenizer_ckpt={tok}"]) == 0  # ... unless overridden
