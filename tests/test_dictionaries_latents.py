"""Reading dictionary latents (probes/dictionaries/latents.py) against hand computations on a tiny random Llama, and
saving / loading dictionaries (probes/dictionaries/saving.py): exact round trip, one clear error for a bad folder."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_tiny

from probes.dictionaries import (
    Crosscoder,
    CrosscoderConfig,
    DictionaryFileError,
    DiffSAE,
    DiffSAEConfig,
    decoder_logit_lens,
    latent_steering_unit,
    load_dictionary,
    max_activating,
    save_dictionary,
    steer_with_latent,
    train_dictionary,
)
from probes.diff.adl import scaled
from probes.diff.steering import sample_steered
from workbench.errors import CheckpointError, ConfigError, WorkbenchError


class CharTokenizer:
    """The few tokenizer members the steering helpers use: ids 3… for characters, 2 = end of sequence, no template."""

    bos_token_id, eos_token_id, pad_token_id, chat_template = 1, 2, 0, None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [3 + ord(ch) % 61 for ch in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


@torch.no_grad()
def test_decoder_logit_lens_is_final_norm_then_unembedding_of_each_row():
    model, _ = make_tiny(0)
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(3, 16, generator=g)
    got = decoder_logit_lens(rows, model, k=5, decode=lambda i: f"t{i}", chunk_rows=2)
    want = model.lm_head(model.model.norm(rows)).topk(5)
    assert [[t["id"] for t in r] for r in got] == want.indices.tolist()
    torch.testing.assert_close(torch.tensor([[t["logit"] for t in r] for r in got]), want.values)
    assert got[0][0]["token"] == f"t{want.indices[0, 0]}"
    neg = decoder_logit_lens(-rows[0], model, k=5)  # one row, negated: the tokens it suppresses
    assert [t["id"] for t in neg[0]] == model.lm_head(model.model.norm(-rows[0])).topk(5).indices.tolist()
    with pytest.raises(ConfigError, match="k must be"):
        decoder_logit_lens(rows, model, k=0)
    with pytest.raises(ConfigError, match="direction must be"):
        decoder_logit_lens(rows[None], model)


def _dictionary() -> tuple[Crosscoder, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    base, tuned = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    base[12], tuned[12] = base[5], tuned[5]  # a tie across batches: the earlier token must come first
    cc = Crosscoder(CrosscoderConfig(d_model=8, n_latents=6, k=2, seed=1))
    cc.fit_input_scale([{"base": base, "tuned": tuned}])
    cc.threshold.fill_(0.02)
    return cc, base, tuned


@torch.no_grad()
def test_max_activating_equals_a_brute_force_sort_over_all_tokens():
    cc, base, tuned = _dictionary()
    start = 100  # the store index of the first token
    ordered = [(start + i, {"base": base[i:i + 7], "tuned": tuned[i:i + 7]}) for i in (0, 7, 14)]
    cc.eval()
    f = cc({"base": base, "tuned": tuned}).latents
    assert bool((f[5] > 0).any()) and torch.equal(f[5], f[12])  # the tie is exercised
    for k in (4, 20):
        got = max_activating(cc, ordered, range(6), k=k)
        for j in range(6):
            col = f[:, j].tolist()
            order = sorted((i for i in range(20) if col[i] > 0), key=lambda i: (-col[i], i))[:k]
            assert [i for i, _ in got[j]] == [start + i for i in order]
            assert [v for _, v in got[j]] == pytest.approx([col[i] for i in order])
    with pytest.raises(ConfigError, match="latent indices"):
        max_activating(cc, ordered, [6])
    with pytest.raises(ConfigError, match="k must be"):
        max_activating(cc, ordered, [0], k=0)


@torch.no_grad()
def test_latent_steering_unit_is_max_activation_times_the_decoder_norm_in_model_units():
    cc, _, _ = _dictionary()
    want = 3.0 * float(cc.W_dec[4, 1].norm()) / float(cc.input_scale[1])
    assert latent_steering_unit(cc, 4, 3.0) == pytest.approx(want)
    assert latent_steering_unit(cc, 4, 3.0, "base") == pytest.approx(3.0 * float(cc.W_dec[4, 0].norm() / cc.input_scale[0]))
    with pytest.raises(ConfigError, match="streams"):
        latent_steering_unit(cc, 4, 3.0, "diff")


def test_steer_with_latent_adds_the_scaled_direction_at_resid_post():
    model, _ = make_tiny(0)
    tok = CharTokenizer()
    g = torch.Generator().manual_seed(3)
    direction = torch.randn(16, generator=g)
    ids = tok("hello there", add_special_tokens=False)["input_ids"]
    got = steer_with_latent(model, tok, direction, 0, ["hello there"], strength=2.0, unit=1.5, n_samples=2,
                            max_new_tokens=5, seed=4)
    want = sample_steered(model, tok, ids, scaled(direction.double(), 1.5, 2.0).float(), 0, 2, 5, 1.0, 4)
    assert got["samples"][0]["texts"] == [tok.decode(n) for n in want]
    assert got["vector_norm"] == pytest.approx(3.0) and got["unit"] == 1.5
    plain = steer_with_latent(model, tok, direction, 0, ["hello there"], strength=0.0, unit=1.5, n_samples=2,
                              max_new_tokens=5, seed=4)
    assert plain["samples"][0]["texts"] == [tok.decode(n) for n in sample_steered(model, tok, ids, None, 0, 2, 5, 1.0, 4)]
    with pytest.raises(ConfigError):
        steer_with_latent(model, tok, direction, 0, [], strength=1.0, unit=1.0)
    with pytest.raises(ConfigError):
        steer_with_latent(model, tok, direction[None], 0, ["x"], strength=1.0, unit=1.0)


def test_steering_with_a_planted_direction_makes_the_base_model_say_its_token():
    model, _ = make_tiny(0)
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight[40] *= 100  # the row's direction, added strongly at the last layer, makes token 40 win
    direction = model.lm_head.weight[40].detach().clone()
    got = steer_with_latent(model, CharTokenizer(), direction, 1, ["abc", "xyz"], strength=200.0, unit=1.0, n_samples=3,
                            max_new_tokens=6, seed=0)
    texts = [t for s in got["samples"] for t in s["texts"]]
    assert sum(t.split().count("40") for t in texts) >= 30  # of 36 generated tokens


def _trained_pair():
    g = torch.Generator().manual_seed(5)
    batches = [{"base": torch.randn(64, 8, generator=g), "tuned": torch.randn(64, 8, generator=g)} for _ in range(6)]
    cc = Crosscoder(CrosscoderConfig(d_model=8, n_latents=12, k=2, dead_after_tokens=64))
    train_dictionary(cc, batches, steps=6, lr=1e-2, seed=0)
    sae = DiffSAE(DiffSAEConfig(d_model=8, n_latents=10, objective="l1", l1_coefficient=0.5))
    train_dictionary(sae, batches, steps=6, lr=1e-2, seed=1)
    return cc, sae, batches


def test_save_load_round_trip_is_exact(tmp_path):
    cc, sae, batches = _trained_pair()
    for d, name in ((cc, "cc"), (sae, "sae")):
        save_dictionary(d, tmp_path / name)
        back = load_dictionary(tmp_path / name)
        assert type(back) is type(d) and back.config == d.config and not back.training
        assert d.state_dict().keys() == back.state_dict().keys()
        assert all(torch.equal(v, back.state_dict()[k]) for k, v in d.state_dict().items())
        d.eval()
        a, b = d(batches[0]), back(batches[0])
        assert torch.equal(a.latents, b.latents) and torch.equal(a.reconstruction, b.reconstruction)
    assert float(load_dictionary(tmp_path / "cc").threshold) == float(cc.threshold) > 0
    assert json.loads((tmp_path / "cc" / "dictionary.json").read_text())["kind"] == "crosscoder"


def _edit_json(path, **changes):
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if key in meta:
            meta[key] = value
        else:
            meta["config"][key] = value
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, match", [
    ("missing_dir", "does not exist"),
    ("missing_weights", "does not exist"),
    ("n_latents", "does not match its config"),
    ("kind", "unknown dictionary kind"),
    ("bad_config", "k is required"),
    ("format", "format_version"),
    ("corrupt", "corrupt"),
])
def test_a_bad_dictionary_folder_is_one_clear_error(tmp_path, damage, match):
    cc, _, _ = _trained_pair()
    folder = save_dictionary(cc, tmp_path / "cc")
    meta, weights = folder / "dictionary.json", folder / "dictionary.safetensors"
    if damage == "missing_dir":
        folder = tmp_path / "nowhere"
    elif damage == "missing_weights":
        weights.unlink()
    elif damage == "n_latents":
        _edit_json(meta, n_latents=13)
    elif damage == "kind":
        _edit_json(meta, kind="transcoder")
    elif damage == "bad_config":
        _edit_json(meta, k=None)
    elif damage == "format":
        _edit_json(meta, format_version=99)
    else:
        weights.write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(DictionaryFileError, match=match) as err:
        load_dictionary(folder)
    assert isinstance(err.value, CheckpointError) and isinstance(err.value, WorkbenchError)
