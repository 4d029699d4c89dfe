"""The benchmark suite sharded across ranks (evaluation.suite.run_suite_sharded): every rank
generates its share of the suite's calls, rank zero gathers and scores. With a tiny untrained AR
model (random but seeded images and answers) the gathered suite must equal the one-process suite:
the same metrics and byte-identical images, since each piece is seeded by its place in the call."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.suite import SuiteConfig, run_suite, run_suite_sharded, split_requests, suite_requests

# editcanvas makes 6 (editing) + 2 (subject) items: with batch_size 4 one edit call is cut in two
# pieces, so a rank makes the second half of a call without the first
CFG = SuiteConfig(geneval_limit=3, images_per_prompt=2, dpg_prompts=1, editcanvas_per_task=1,
                  understanding_scenes=2, interleaved_videos=2, width=32, height=32)


def tiny_generator(tok_path):
    from modules.ar.generator import ARGenerator
    from modules.ar.module import ARModule
    from modules.ar.sampler import SamplingConfig
    from modules.tokenizer import load_tokenizer
    from tests.test_benchmark_callback import TINY_AR

    torch.manual_seed(0)
    module = ARModule(overrides=TINY_AR, tokenizer_ckpt=str(tok_path), text_tokenizer="shapes-words").eval()
    return ARGenerator(module.model, load_tokenizer(str(tok_path)), module.text_tokenizer,
                       sampling=SamplingConfig.from_dict({"top_k": 4, "seed": 0}), batch_size=4)


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    from tests.test_benchmark_callback import save_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tok.ckpt"
    save_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def generator(tok_path):
    return tiny_generator(tok_path)


def _without_seconds(metrics):
    return {k: ({kk: vv for kk, vv in v.items() if kk != "seconds"} if isinstance(v, dict) else v)
            for k, v in metrics.items()}


def _pngs(folder):
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def test_requests_are_split_in_batch_pieces(generator):
    reqs = suite_requests(generator, CFG)
    assert [r.method for r in reqs].count("text_to_image") == 3 + 1
    pieces = split_requests(generator, reqs)
    edits = [(k, len(p.args[0])) for r, k, p in pieces if p.method == "edit"]
    assert sum(n for _, n in edits) == sum(len(r.args[0]) for r in reqs if r.method == "edit")
    assert (4, 2) in edits  # the second piece of the 6-item edit call starts at offset 4


@pytest.mark.parametrize("world", [2, 3])
def test_gathered_suite_equals_one_process(generator, tmp_path, world):
    from evaluation.suite import generate_share

    single = run_suite(generator, tmp_path / "one", CFG)
    assert {"geneval", "dpg", "editcanvas", "understanding"} <= set(single) and "skipped" not in single["interleaved"]
    requests = suite_requests(generator, CFG)
    others = [generate_share(generator, requests, r, world) for r in range(1, world)]
    assert all(share["pieces"] for share in others)  # every rank makes some pieces
    mine = []
    gathered = run_suite_sharded(generator, tmp_path / "many", CFG, rank=0, world=world,
                                 all_gather=lambda share: mine.append(share) or [share, *others])
    assert mine[0]["pieces"]
    assert _without_seconds(gathered) == _without_seconds(single)
    assert _without_seconds(json.loads((tmp_path / "many" / "metrics.json").read_text())) == \
        _without_seconds(json.loads((tmp_path / "one" / "metrics.json").read_text()))
    one, many = _pngs(tmp_path / "one"), _pngs(tmp_path / "many")
    assert one.keys() == many.keys() and len(one) > 10
    assert all(np.array_equal(one[k], many[k]) for k in one)
    if world == 2:  # rank 1 generates, gathers, and neither scores nor writes
        assert run_suite_sharded(generator, tmp_path / "rank1", CFG, rank=1, world=2,
                                 all_gather=lambda share: [mine[0], share]) is None
        assert not (tmp_path / "rank1").exists()


def test_a_failing_rank_raises_on_rank_zero_too(generator, tmp_path):
    from evaluation.suite import generate_share

    class Broken:
        batch_size = 4

        def __getattr__(self, name):
            return getattr(generator, name)

        def answer(self, images, questions):
            raise RuntimeError("out of memory")

    bad = generate_share(Broken(), suite_requests(generator, CFG), 1, 2)
    assert "rank 1: RuntimeError: out of memory" in bad["error"]
    with pytest.raises(RuntimeError, match="benchmark generation failed on rank 1: RuntimeError: out of memory"):
        run_suite_sharded(generator, tmp_path, CFG, rank=0, world=2, all_gather=lambda share: [share, bad])
    assert not (tmp_path / "metrics.json").exists()


def _rank(rank: int, world: int, tok_path: str, out: str, store: str) -> None:
    import torch.distributed as dist

    from callbacks.evaluation import _all_gather

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        gen = tiny_generator(tok_path)
        metrics = run_suite_sharded(gen, out, CFG, rank=rank, world=world, all_gather=_all_gather)
        assert (metrics is None) == (rank != 0)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one(generator, tok_path, tmp_path):
    """Real processes: torch.multiprocessing spawn, gloo on CPU, the callback's all_gather_object."""
    import torch.multiprocessing as mp

    single = run_suite(generator, tmp_path / "one", CFG)
    mp.spawn(_rank, args=(2, str(tok_path), str(tmp_path / "two"), str(tmp_path / "store")), nprocs=2, join=True)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert _without_seconds(two) == _without_seconds(json.loads(json.dumps(single, default=float)))
    one, many = _pngs(tmp_path / "one"), _pngs(tmp_path / "two")
    assert one.keys() == many.keys() and all(np.array_equal(one[k], many[k]) for k in one)
