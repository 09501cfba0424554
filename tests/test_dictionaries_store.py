"""The activation store (probes/dictionaries/store.py) on tiny saved models: stored activations equal a direct
``record`` of the same batches (fp32 to the bit, bf16 equal to the cast), a collection SIGKILLed mid-run resumes to
shards identical to an uninterrupted one, a store of other models / settings / corpus or a damaged one is refused,
and the shuffled reader yields every token once per epoch with at most ``shards_in_memory`` shards held."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import weakref
from collections import Counter
from pathlib import Path

import pytest
import torch

from app.latency.tiny import CORPUS, save_tiny, save_tiny_run
from probes.dictionaries import ActivationStore, StoreSettings, collect_activations
from probes.diff.corpus import token_rows
from workbench.data import right_pad
from workbench.errors import ConfigError
from workbench.hooked import record
from workbench.pair import ModelPair
from workbench.sites import Site

ROOT = Path(__file__).resolve().parents[1]
WORDS = " ".join(CORPUS).split()


def texts(n: int = 40) -> list[str]:
    """``n`` texts of 1..18 words (seeded), one of them empty (it keeps its row index, and stores nothing)."""
    g = torch.Generator().manual_seed(0)
    out = [" ".join(WORDS[int(j)] for j in torch.randint(len(WORDS), (int(k),), generator=g))
           for k in torch.randint(1, 19, (n,), generator=g)]
    out[3] = ""
    return out


def sha(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("store_models")
    base = save_tiny(root / "base")
    tuned = save_tiny(root / "tuned", seed=1, perturb_from=base)
    return base, tuned, save_tiny_run(root / "lofit-run", base)


@pytest.fixture(scope="module")
def pair(dirs):
    from workbench.models.tuned import load_pair

    return load_pair(str(dirs[0]), str(dirs[1]), "cpu").pair


@pytest.fixture(scope="module")
def lofit_bos_pair(dirs):
    """The base against a LoFiT run on it (the tuned side is an intervention on shared weights), BOS prepended."""
    from workbench.models.tuned import load_pair

    p = load_pair(str(dirs[0]), str(dirs[2]), "cpu").pair
    return ModelPair(p.base, p.tuned, p.tokenizer, dataclasses.replace(p.base_info, prepend_bos=True), p.tuned_info,
                     tuned_intervention=p.tuned_intervention)


@torch.no_grad()
def reference(pair, items, s: StoreSettings) -> dict[str, torch.Tensor]:
    """Every real token's activations by a plain ``record`` of each whole forward pass (no ``stop``, no ``select``) on
    the same batches (``batch_size`` non-empty rows, right-padded), then masked and cast by hand."""
    rows = [(i, ids) for i, t in enumerate(items) for ids in token_rows([t], pair.tokenizer, s.max_length, pair.prepend_bos)]
    sites, dtype = s.sites(), getattr(torch, s.dtype)
    out: dict[str, list[torch.Tensor]] = {}
    for b in range(0, len(rows), s.batch_size):
        batch = rows[b:b + s.batch_size]
        ids, mask, _ = right_pad([r for _, r in batch], pair.tokenizer.pad_token_id)
        keep = mask.bool()
        keep[:, 0] = keep[:, 0] & (not s.skip_first)
        with record(pair.base, sites) as rb:
            pair.base(input_ids=ids, attention_mask=mask)
        with pair.tuned_context(), record(pair.tuned, sites) as rt:
            pair.tuned(input_ids=ids, attention_mask=mask)
        parts = {"token_id": ids[keep], "row": torch.tensor([i for i, _ in batch])[:, None].expand_as(ids)[keep],
                 "pos": torch.arange(ids.shape[1]).expand_as(ids)[keep]}
        parts |= {f"{role}/{site.hook_name}": rec[site][keep].to(dtype) for role, rec in (("base", rb), ("tuned", rt)) for site in sites}
        for k, v in parts.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


def shard_hashes(path: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("shard_*.safetensors"))]


@pytest.mark.parametrize("case", ["fp32-full-tuned", "bf16-lofit-bos"])
def test_store_round_trips_exactly(case, pair, lofit_bos_pair, tmp_path):
    from safetensors.torch import load_file

    p = pair if case == "fp32-full-tuned" else lofit_bos_pair
    s = (StoreSettings(layers=[0, 1], mlp_post=True, shard_tokens=50, batch_size=4, max_length=12) if case == "fp32-full-tuned"
         else StoreSettings(layers=[1], dtype="bfloat16", shard_tokens=64, batch_size=3, max_length=16, skip_first=False))
    items = texts()
    logged: list[str] = []
    manifest = collect_activations(p, items, tmp_path / "store", s, corpus_sha256=sha(items), log=logged.append)
    ref = reference(p, items, s)
    store = ActivationStore(manifest, expect={"models": p, "sites": s.sites(), "corpus_sha256": sha(items)}, verify="sha256")

    n = len(ref["token_id"])
    n_rows = sum(1 for t in items if t)
    real = sum(len(r) for t in items for r in token_rows([t], p.tokenizer, s.max_length, p.prepend_bos))
    assert store.n_tokens == n == real - (n_rows if s.skip_first else 0) and store.complete
    assert store.sites == [st.hook_name for st in s.sites()]
    assert [sh["n_tokens"] for sh in store.manifest["shards"]][:-1] == [s.shard_tokens] * (len(store.manifest["shards"]) - 1)
    assert len(store.manifest["shards"]) == -(-n // s.shard_tokens) >= 3 and len(logged) >= 3
    info = store.token_info()
    for k in ("token_id", "row", "pos"):
        assert info[k].dtype == torch.int64 and torch.equal(info[k], ref[k]), k
    assert (info["pos"] == 0).any() != s.skip_first and 3 not in info["row"].tolist()  # the empty text stored nothing
    for site in s.sites():
        name = site.hook_name
        assert store.d(site) == (32 if site.hook == "mlp.hook_post" else 16)
        got = list(store.ordered(name, 7))
        assert [start for start, _ in got] == list(range(0, n, 7))
        for role in ("base", "tuned"):
            cat = torch.cat([b[role] for _, b in got])
            assert cat.dtype == torch.float32 and torch.equal(cat, ref[f"{role}/{name}"].float()), (role, name)
        assert not torch.equal(ref[f"base/{name}"], ref[f"tuned/{name}"])  # the tuned side really ran tuned
    raw = load_file(str(tmp_path / "store" / "shard_00001.safetensors"))
    key = f"tuned/{s.sites()[0].hook_name}"
    assert raw[key].dtype == getattr(torch, s.dtype) and torch.equal(raw[key], ref[key][s.shard_tokens:2 * s.shard_tokens])
    if s.dtype == "bfloat16":  # the store is the cast, not a recomputation in bf16
        assert not torch.equal(ref[key].float(), reference(p, items, dataclasses.replace(s, dtype="float32"))[key])
    # context windows: the row's own tokens around the position, also across a shard boundary
    for index in (0, s.shard_tokens - 1, s.shard_tokens, n - 1):
        row, pos = int(info["row"][index]), int(info["pos"][index])
        ids = next(iter(token_rows([items[row]], p.tokenizer, s.max_length, p.prepend_bos)))
        ctx = store.context(index, 3)
        assert ctx == ids[max(0, pos - 3):pos + 4] and ctx[min(3, pos)] == int(info["token_id"][index])
    assert store.context(torch.tensor(5), 0) == [int(info["token_id"][5])]
    with pytest.raises(ConfigError, match="outside"):
        store.context(n, 2)


CHILD = r"""
import json, os, signal, sys, torch
from workbench.hooked import module_hooks
from workbench.models.tuned import load_pair
from probes.dictionaries import StoreSettings, collect_activations
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
pair = load_pair(a["base"], a["tuned"], "cpu").pair
written = []
def kill(module, args):
    if written:  # a shard is on disk: die in the middle of the next batch, with a half-filled shard in memory
        os.kill(os.getpid(), signal.SIGKILL)
with module_hooks(pre=[(pair.tuned, kill)]):
    collect_activations(pair, a["texts"], a["out"], StoreSettings(**a["settings"]), corpus_sha256=a["sha"], log=written.append)
print("not killed")
"""


def test_resume_after_sigkill_gives_identical_shards(pair, dirs, tmp_path):
    items = texts(60)
    s = StoreSettings(layers=[0, 1], mlp_post=True, shard_tokens=37, batch_size=4, max_length=12)
    killed = tmp_path / "killed"
    args = {"base": str(dirs[0]), "tuned": str(dirs[1]), "texts": items, "out": str(killed), "sha": sha(items),
            "threads": torch.get_num_threads(), "settings": dataclasses.asdict(s)}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    m = json.loads((killed / "manifest.json").read_text())
    assert len(m["shards"]) == 1 and not m["complete"] and m["resume"]["skip_tokens"] > 0  # resumes inside a batch
    assert sorted(p.name for p in killed.iterdir() if not p.name.startswith(".")) == ["manifest.json", "shard_00000.safetensors"]
    first = shard_hashes(killed)

    logged: list[str] = []
    collect_activations(pair, items, killed, s, corpus_sha256=sha(items), log=logged.append)
    assert "resuming after shard 0" in logged[0]
    collect_activations(pair, items, tmp_path / "whole", s, corpus_sha256=sha(items), log=None)
    resumed, whole = shard_hashes(killed), shard_hashes(tmp_path / "whole")
    assert len(whole) > 3 and resumed == whole and resumed[0] == first[0]
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (killed, tmp_path / "whole"))
    assert a["shards"] == b["shards"] and a["n_tokens"] == b["n_tokens"] and a["complete"] and a["rows_done"] == b["rows_done"]
    done: list[str] = []
    collect_activations(pair, items, killed, s, corpus_sha256=sha(items), log=done.append)  # complete: nothing redone
    assert shard_hashes(killed) == whole and "complete" in done[0]


@pytest.fixture
def small_store(pair, tmp_path):
    items = texts()
    s = StoreSettings(layers=[1], shard_tokens=40, batch_size=4, max_length=12)
    collect_activations(pair, items, tmp_path / "s", s, corpus_sha256=sha(items), log=None)
    return tmp_path / "s", items, s


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_store_of_other_models_settings_or_corpus_is_refused(small_store, pair, lofit_bos_pair, tmp_path):
    path, items, s = small_store
    before = _files(path)
    for p, settings, digest, match in [
            (pair, dataclasses.replace(s, max_length=11), sha(items), "settings.max_length 12"),
            (pair, dataclasses.replace(s, batch_size=5), sha(items), "settings.batch_size"),
            (pair, dataclasses.replace(s, dtype="bfloat16"), sha(items), "dtype"),
            (pair, s, sha(items[1:]), "corpus_sha256"),
            (lofit_bos_pair, s, sha(items), "tuned model weight_hash")]:
        with pytest.raises(ConfigError, match=match):
            collect_activations(p, items, path, settings, corpus_sha256=digest, log=None)
    assert _files(path) == before  # nothing overwritten

    stray = tmp_path / "stray"
    stray.mkdir()
    shutil.copy(path / "shard_00000.safetensors", stray)
    with pytest.raises(ConfigError, match="no manifest.json"):
        collect_activations(pair, items, stray, s, corpus_sha256=sha(items), log=None)
    with pytest.raises(ConfigError, match="corpus_sha256 must be"):
        collect_activations(pair, items, tmp_path / "x", s, corpus_sha256="abc", log=None)
    with pytest.raises(ConfigError, match="layer 2 does not exist"):
        collect_activations(pair, items, tmp_path / "x", StoreSettings(layers=[2]), corpus_sha256=sha(items), log=None)
    with pytest.raises(ConfigError, match="no tokens"):
        collect_activations(pair, ["", "B"], tmp_path / "y", s, corpus_sha256=sha(["", "B"]), log=None)


def _damaged(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    shard = dst / "shard_00001.safetensors"
    if how == "missing":
        shard.unlink()
    elif how == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif how == "flipped":  # same size, one byte of the activations changed: only the sha256 sees it
        data = bytearray(shard.read_bytes())
        data[-50] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif how == "other-model":
        m = json.loads((dst / "manifest.json").read_text())
        m["models"]["base"]["weight_hash"] = "sha256:" + "0" * 64
        (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("how, match", [("missing", "shard_00001.safetensors is missing"),
                                        ("truncated", "truncated or rewritten"),
                                        ("flipped", "does not match its sha256"),
                                        ("other-model", "base model weight_hash")])
def test_a_damaged_or_foreign_store_is_refused(how, match, small_store, pair, tmp_path):
    path, items, s = small_store
    bad = _damaged(path, tmp_path / how, how)
    with pytest.raises(ConfigError, match=match):
        ActivationStore(bad, expect={"models": pair}, verify="sha256")
    if how == "flipped":
        ActivationStore(bad)  # a size check alone cannot see it (documented)
    if how in ("missing", "other-model"):
        with pytest.raises(ConfigError, match="missing|weight_hash"):
            collect_activations(pair, items, bad, s, corpus_sha256=sha(items), log=None)


def test_expectations_and_bad_reader_input(small_store, tmp_path):
    path, items, _ = small_store
    store = ActivationStore(path, expect={"sites": ["blocks.1.hook_resid_post"], "skip_first": True, "dtype": "float32"})
    for expect, match in [({"sites": [Site(0, "hook_resid_post")]}, r"\['blocks.0.hook_resid_post'\] are not stored"),
                          ({"skip_first": False}, "skip_first True"), ({"corpus_sha256": sha(items[:3])}, "corpus_sha256"),
                          ({"colour": "red"}, "expect must be a dict")]:
        with pytest.raises(ConfigError, match=match):
            ActivationStore(path, expect=expect)
    with pytest.raises(ConfigError, match="no readable activation store"):
        ActivationStore(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="not in the store"):
        next(store.batches("blocks.0.hook_resid_post", 8, seed=0))
    with pytest.raises(ConfigError, match="batch_tokens"):
        next(store.ordered(Site(1, "hook_resid_post"), 0))
    with pytest.raises(ConfigError, match="shards_in_memory"):
        next(store.batches(Site(1, "hook_resid_post"), 8, seed=0, shards_in_memory=0))


@pytest.mark.parametrize("field, value", [("layers", []), ("layers", [1, 1]), ("layers", [-1]), ("layers", "1"),
                                          ("shard_tokens", 0), ("batch_size", 2.0), ("dtype", "float16"),
                                          ("mlp_post", 1), ("max_length", True)])
def test_settings_are_validated(field, value):
    with pytest.raises(ConfigError, match=f"StoreSettings.{field}"):
        StoreSettings(**{"layers": [0], field: value})


def test_shuffled_batches_cover_every_token_once_per_epoch_with_bounded_memory(small_store):
    path, _, _ = small_store
    store = ActivationStore(path)
    site, n = "blocks.1.hook_resid_post", store.n_tokens
    n_shards = len(store.manifest["shards"])
    assert n_shards >= 5
    whole = torch.cat([torch.cat([b["base"], b["tuned"]], 1) for _, b in store.ordered(site, 64)])
    # a token is its (base, tuned) vector; equal vectors are tokens with equal prefixes, interchangeable (multisets below)
    assert len(whole) == n and len({tuple(r) for r in whole.tolist()}) > 0.9 * n

    windows, live = [], []
    fill = store._fill_window

    def watched(shard_ids, name):
        windows.append(list(shard_ids))
        assert all(ref() is None for ref in live), "an earlier window is still held while the next one is read"
        out = fill(shard_ids, name)
        live.extend(weakref.ref(t) for t in out.values())
        return out

    store._fill_window = watched
    got = list(store.batches(site, 16, seed=3, epochs=2, shards_in_memory=2))
    assert all(b["base"].dtype == torch.float32 and b["base"].shape == b["tuned"].shape for b in got)
    rows = torch.cat([torch.cat([b["base"], b["tuned"]], 1) for b in got])
    assert len(rows) == 2 * n
    for epoch in (rows[:n], rows[n:]):  # base and tuned stay paired: the joined rows are the stored ones
        assert Counter(map(tuple, epoch.tolist())) == Counter(map(tuple, whole.tolist()))
        assert not torch.equal(epoch, whole)  # shuffled
    assert max(map(len, windows)) == 2 and len(windows) == 2 * -(-n_shards // 2)
    assert sorted(i for w in windows[:len(windows) // 2] for i in w) == list(range(n_shards))
    assert [len(b["base"]) for b in got].count(16) >= len(got) - 2  # full batches, across window boundaries too


def test_same_seed_same_batches_other_seed_other_order(small_store):
    store = ActivationStore(small_store[0])
    site = Site(1, "hook_resid_post")

    def run(seed, k=2):
        return torch.cat([b["tuned"] for b in store.batches(site, 10, seed=seed, shards_in_memory=k)])

    a = run(7)
    assert torch.equal(a, run(7)) and not torch.equal(a, run(8)) and not torch.equal(a, run(7, k=3))
    assert torch.equal(a.sort(0).values, run(8).sort(0).values)
