import json
import random

import pytest
import torch

from bridges.skip import (
    blocks_path,
    layer_skip_study,
    least_important,
    lowest_influence,
    random_layers,
    scored_logits,
    skip_and_recover,
    skip_measures,
    skipped_blocks,
    top_overlap,
)
from bridges.skip_sets import percentile, skip_sets
from bridges.train import TrainConfig, answer_loss, greedy_completions, lm_batch, split
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.store import save_atlas
from tlatlas.atlas.sums import mean_effect
from tlatlas.models import load_hf_model
from tlatlas.tasks import build_suite

PROMPTS = TrainConfig(family="any", steps=0, n_train=2, n_heldout=1)
RECOVERY = TrainConfig(family="sentiment", steps=10, n_train=16, n_heldout=8, lr=1e-2)


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _without_blocks(path, layers):
    """The reference: the same checkpoint rebuilt with ``layers`` removed from the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    full = load_hf_model(path, device="cpu", dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(path))
    kept = [i for i in range(config.num_hidden_layers) if i not in layers]
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    small = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {}
    for key, value in full.state_dict().items():
        if key.startswith("model.layers."):
            idx, rest = key[len("model.layers."):].split(".", 1)
            if int(idx) not in kept:
                continue
            key = f"model.layers.{kept.index(int(idx))}.{rest}"
        state[key] = value
    small.load_state_dict(state, strict=True)
    return small.eval()


@pytest.fixture(scope="module")
def atlas_file(tiny_models, tmp_path_factory):
    atlas = build_atlas(tiny_models["llama"], SuiteSpec(per_family=2, families=("ioi", "code")),
                        AtlasConfig(batch_size=2))
    stem = tmp_path_factory.mktemp("skip") / "seed42"
    save_atlas(atlas, stem)
    return stem, atlas


def test_skipping_no_layer_gives_overlap_one_and_kl_zero(tiny_dirs, tiny_models):
    row = skip_and_recover(tiny_dirs["llama"], tiny_models["llama"], [], PROMPTS)
    before = row["before"]
    assert (before["top5_overlap"], before["kl"]) == (1.0, 0.0)
    assert before["top5_per_prompt"] == [1.0] * len(split(PROMPTS)[1])
    assert "after" not in row  # no steps, no recovery


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_skipped_forward_equals_model_rebuilt_without_those_blocks(tiny_dirs, tiny_models, arch):
    path, held = tiny_dirs[arch], split(PROMPTS)[1]
    tok = _tokenizer(path)
    hf = load_hf_model(path, device="cpu", dtype=torch.float32)
    full = scored_logits(hf, tok, held)
    with skipped_blocks(hf, [1], path=blocks_path(tiny_models[arch])):
        skipped = scored_logits(hf, tok, held)
        ids = lm_batch(held[:3], tok)[0]
        skipped_all = hf(input_ids=ids).logits  # every position, default cache on
    torch.testing.assert_close(skipped, scored_logits(_without_blocks(path, [1]), tok, held),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(skipped_all, _without_blocks(path, [1])(input_ids=ids).logits,
                               rtol=1e-5, atol=1e-5)
    m = skip_measures(full, skipped)
    assert m["kl"] > 1e-3 and m["top5_overlap"] < 1.0
    assert torch.equal(scored_logits(hf, tok, held), full)  # the blocks are back


@pytest.mark.parametrize("layers", [[0], [0, 2], [1]])
def test_greedy_decoding_with_a_kv_cache_equals_the_rebuilt_model(tiny_dirs, tiny_models, layers):
    """generate reads the cache's length from layer 0: a skipped block keeps it right."""
    path, held = tiny_dirs["llama"], split(PROMPTS)[1]
    tok = _tokenizer(path)
    hf = load_hf_model(path, device="cpu", dtype=torch.float32)
    with skipped_blocks(hf, layers, path=blocks_path(tiny_models["llama"])):
        got = greedy_completions(hf, tok, held)
    assert got == greedy_completions(_without_blocks(path, layers), tok, held)
    assert got != greedy_completions(hf, tok, held)  # skipping changed the completions


def test_one_block_skip_is_the_atlas_block_ablation(tiny_dirs, tiny_models):
    """Identity in a block's place == zero-ablating its whole write: same KL as the atlas."""
    model = tiny_models["llama"]
    suite = build_suite("synthetic", per_family=3, families=["ioi"])
    atlas = build_atlas(model, SuiteSpec(per_family=3, families=("ioi",)),
                        AtlasConfig(batch_size=3, positions_ablated="all"))
    kl = mean_effect(atlas.sums, "kl", "block")[:, 0]
    hf, tok = load_hf_model(tiny_dirs["llama"], device="cpu", dtype=torch.float32), model.tokenizer
    full = scored_logits(hf, tok, list(suite))
    for layer in range(model.n_layers):
        with skipped_blocks(hf, [layer]):
            got = skip_measures(full, scored_logits(hf, tok, list(suite)))["kl"]
        assert got == pytest.approx(float(kl[layer]), rel=1e-4, abs=1e-6)


def test_skip_sets_and_overlap():
    full = torch.tensor([[9.0, 8, 7, 6, 5, 4, 0], [0, 1, 2, 3, 4, 5, 6]])
    other = torch.tensor([[9.0, 8, 7, 0, 0, 0, 6], [0, 1, 2, 3, 4, 5, 6]])
    assert top_overlap(full, other).tolist() == pytest.approx([0.8, 1.0])
    assert random_layers(30, 4, seed=3) == random_layers(30, 4, seed=3)
    assert len(set(random_layers(30, 4, seed=3))) == 4
    with pytest.raises(IndexError, match="2 blocks"):
        with skipped_blocks(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity()),
                            [2], path=""):
            pass


def test_least_important_are_the_smallest_block_effects(atlas_file):
    _, atlas = atlas_file
    per_layer = mean_effect(atlas.sums, "kl", "block").mean(1)
    least = least_important(atlas.sums, 1)
    assert least == [int(per_layer.argmin())]
    assert least_important(atlas.sums, 3) == [0, 1, 2] and least_important(atlas.sums, 0) == []
    with pytest.raises(ValueError):
        least_important(atlas.sums, 4)


@pytest.fixture(scope="module")
def trained_tiny(tiny_dirs, tmp_path_factory):
    """A tiny model trained (all weights) on ``sentiment``, so that its predictions are
    something a fine-tune on the same family can move a skipped copy back towards."""
    from tlatlas.models import load_model

    path = tmp_path_factory.mktemp("trained") / "llama"
    torch.manual_seed(0)
    hf = load_hf_model(tiny_dirs["llama"], device="cpu", dtype=torch.float32)
    tok = _tokenizer(tiny_dirs["llama"])
    train = split(RECOVERY)[0]
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-3)
    hf.train()
    order = random.Random(0)
    for _ in range(30):
        ids, labels = lm_batch(order.sample(train, 8), tok)
        loss = answer_loss(hf, ids, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path, load_model(path, device="cpu")



@pytest.mark.parametrize("objective", ["distill", "lm"])
@pytest.mark.parametrize("layers", [[0], [1, 2]])
def test_recovery_fine_tune_moves_the_skipped_model_back(trained_tiny, layers, objective):
    path, model = trained_tiny
    a = skip_and_recover(path, model, layers, RECOVERY, modules=("o",), rank=4,
                         objective=objective)
    b = skip_and_recover(path, model, layers, RECOVERY, modules=("o",), rank=4,
                         objective=objective)
    assert a == b  # deterministic
    assert a["objective"] == objective
    assert a["after"]["kl"] < a["before"]["kl"]
    assert a["after"]["top5_overlap"] >= a["before"]["top5_overlap"]
    assert a["heldout_loss_after"] < a["heldout_loss_before"]


def test_distillation_recovery_lowers_kl_on_held_out_prompts(tiny_dirs, tiny_models):
    """Distilled to the full model on the training prompts, the skipped model's KL to the
    full model falls on held-out prompts it never saw, prompt by prompt (paired CI > 0)."""
    config = TrainConfig(family="any", steps=30, n_train=8, n_heldout=4, lr=1e-2)
    train, held = split(config)
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    row = skip_and_recover(tiny_dirs["llama"], tiny_models["llama"], [1], config, rank=4)
    assert row["objective"] == "distill" and len(row["kl_after_per_prompt"]) == len(held) == 48
    assert row["after"]["kl"] < row["before"]["kl"]
    assert row["recovery"]["estimate"] == pytest.approx(row["before"]["kl"] - row["after"]["kl"])
    assert row["recovery"]["ci"][0] > 0 and row["recovery"]["n"] == 48
    losses = row["train_losses"]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])


@pytest.fixture(scope="module")
def identity_block(tiny_dirs, tmp_path_factory):
    """The tiny llama with block 1 made the identity: its attention o_proj and MLP
    down_proj are zero, so it adds nothing to the residual stream."""
    from tlatlas.models import load_model

    path = tmp_path_factory.mktemp("identity") / "llama"
    hf = load_hf_model(tiny_dirs["llama"], device="cpu", dtype=torch.float32)
    with torch.no_grad():
        hf.model.layers[1].self_attn.o_proj.weight.zero_()
        hf.model.layers[1].mlp.down_proj.weight.zero_()
    hf.save_pretrained(path)
    _tokenizer(tiny_dirs["llama"]).save_pretrained(path)
    return path, load_model(path, device="cpu")


def test_skipping_an_identity_block_is_at_the_0th_percentile(identity_block):
    path, model = identity_block
    atlas = build_atlas(model, SuiteSpec(per_family=2, families=("ioi", "code")),
                        AtlasConfig(batch_size=2, positions_ablated="all"))
    assert least_important(atlas.sums, 1) == [1]
    out = layer_skip_study(path, model, atlas.sums, k=1, recovery=PROMPTS)
    dist = out["distribution"]
    assert dist["exhaustive"] and dist["sets"] == [[0], [1], [2]] and dist["total_sets"] == 3
    assert dist["mean_kl"][1] == 0.0 and min(dist["mean_kl"][0], dist["mean_kl"][2]) > 1e-3
    atlas_set = out["sets"]["atlas"]
    assert atlas_set["layers"] == [1] and atlas_set["kl"] == 0.0
    assert atlas_set["percentile"]["estimate"] == 0.0
    assert atlas_set["percentile"]["ci"] == [0.0, 0.0] and atlas_set["percentile"]["n"] == 12
    # Block Influence also sees the identity (cos(resid_pre, resid_post) = 1)
    assert out["sets"]["block-influence"]["layers"] == [1]
    assert out["sets"]["random"]["percentile"]["estimate"] > 0 or out["sets"]["random"][
        "layers"] == [1]
    # compared prompt by prompt, every other set is worse than the atlas's: CI above 0
    assert out["comparisons"]["random_sets_minus_atlas"]["ci"][0] > 0
    assert {r["skip_set"] for r in out["rows"]} == {"atlas", "random"}


def test_percentile_counts_the_sets_strictly_safer():
    dist = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    assert percentile(torch.tensor([2.0, 2.0]), dist).estimate == 25.0
    assert percentile(torch.tensor([0.0, 0.0]), dist).estimate == 0.0
    assert percentile(torch.tensor([9.0, 9.0]), dist).estimate == 100.0
    assert lowest_influence(torch.tensor([0.3, 0.1, 0.2, 0.1]), 2) == [1, 3]


def test_skip_sets_are_all_sets_or_distinct_random_ones():
    sets, every = skip_sets(5, 2, max_sets=10)
    assert every and len(sets) == 10 == len(set(sets))
    sets, every = skip_sets(30, 4, max_sets=60, seed=1)
    assert not every and len(set(sets)) == 60 and all(len(s) == 4 for s in sets)
    assert sets == skip_sets(30, 4, max_sets=60, seed=1)[0]
    with pytest.raises(ValueError):
        skip_sets(3, 4)


def test_skip_cli(tiny_dirs, atlas_file, tmp_path, capsys):
    from tlatlas.cli import main

    out = tmp_path / "skip.json"
    assert main(["study", "skip", "--model", str(tiny_dirs["llama"]), "--atlas",
                 str(atlas_file[0]), "--k", "1", "--seeds", "5", "--rank", "2", "--steps", "2",
                 "--n-train", "2", "--n-heldout", "1", "--recovery-modules", "o",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["skip_set"]: r for r in data["rows"]}
    assert rows["atlas"]["layers_skipped"] == least_important(atlas_file[1].sums, 1)
    assert rows["random"]["layers_skipped"] == random_layers(3, 1, seed=5)
    for r in rows.values():
        assert {"before", "after"} <= r.keys() and 0 <= r["after"]["top5_overlap"] <= 1
    assert data["n_prompts"] == 12 and data["command"].startswith("tlatlas study skip")
    assert "skip set" in capsys.readouterr().out
