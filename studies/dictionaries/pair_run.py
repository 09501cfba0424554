"""One base-vs-tuned pair through the sparse dictionaries: store → train → read (used by the dictionaries study and by
the diffing benchmark's dictionary readouts).

Steps of :func:`run_pair`, each resumable (a finished artifact is reused, never redone):

1. ``store/``: base and tuned activations at ``blocks.{layer}.hook_resid_post`` over the texts
   (:func:`probes.dictionaries.collect_activations`; position 0 dropped);
2. ``<dictionary>/``: each configured dictionary trained on shuffled store batches (:func:`probes.dictionaries.
   train_dictionary`) and saved (safetensors + JSON);
3. read, over every stored token (in-sample: the dictionaries saw these tokens): fraction of variance explained per
   model, mean L0, dead latents; for a crosscoder the relative decoder norm Δ per latent, its classes (base-only /
   shared / tuned-only) and Latent Scaling of the tuned-only latents (Minder et al. 2025: ``ν_ε``, ``ν_r``; a latent
   stays tuned-only when both are below ``ls_max_ratio``);
4. the **top latents** — a crosscoder's tuned-only latents after Latent Scaling, a difference SAE's latents — ranked
   by activation mass (Σ of the latent's activation over the store's tokens; our rule), each with its decoder row's
   top tokens through the tuned model's unembedding and its max-activating contexts;
5. with ``keywords``: steering the **base** model with the first ``steer_latents`` top latents' decoder directions
   (strength × the latent's largest contribution, :func:`probes.dictionaries.latent_steering_unit`) on
   ``steer_prompts`` prompts, the share of samples with a keyword against the same seeds unsteered.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.config import NonNegativeFloat, PositiveFloat, PositiveInt, check_fields, config_from_dict
from workbench.errors import ConfigError
from workbench.runs import log_progress

KINDS = {"crosscoder": "CrosscoderConfig", "diff_sae": "DiffSAEConfig"}


@dataclass
class TrainSettings:
    """Every dictionary's optimisation: ``steps`` of ``batch_tokens`` shuffled store tokens, Adam at ``lr``."""

    steps: PositiveInt = 600
    batch_tokens: PositiveInt = 512
    lr: PositiveFloat = 1e-3
    warmup_steps: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ViewSettings:
    """Sizes of the latent views: latents read (``top_latents``), contexts per latent and tokens each side
    (``contexts``, ``context_window``), decoder tokens listed (``top_tokens``), the Latent Scaling cut-off
    (``ls_max_ratio``), and the steering check (latents, prompts, samples, tokens, strengths in units of the latent's
    largest contribution)."""

    top_latents: PositiveInt = 10
    contexts: PositiveInt = 5
    context_window: PositiveInt = 8
    top_tokens: PositiveInt = 10
    ls_max_ratio: PositiveFloat = 0.2
    steer_latents: int = 3
    steer_prompts: list[str] = field(default_factory=list)
    steer_samples: PositiveInt = 2
    steer_max_new_tokens: PositiveInt = 24
    steer_strengths: list[NonNegativeFloat] = field(default_factory=lambda: [1.0, 4.0])

    def __post_init__(self) -> None:
        check_fields(self)
        if self.steer_latents < 0:
            raise ConfigError(f"ViewSettings.steer_latents must be >= 0, got {self.steer_latents}")


@dataclass
class PairRunSettings:
    """``store``: :class:`probes.dictionaries.StoreSettings` fields; ``dictionaries``: name → ``{"kind": "crosscoder" |
    "diff_sae", **config fields but d_model}``; ``train``, ``views``: :class:`TrainSettings`, :class:`ViewSettings`.

    Raises:
        ConfigError: a bad store, training or view setting, no dictionary, an unknown kind or a dictionary config its
            class refuses (checked with a placeholder width; the model's ``d_model`` replaces it at run time).
    """

    store: dict[str, Any] = field(default_factory=dict)
    dictionaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    train: TrainSettings = field(default_factory=TrainSettings)
    views: ViewSettings = field(default_factory=ViewSettings)

    def __post_init__(self) -> None:
        from probes.dictionaries import StoreSettings

        check_fields(self)
        config_from_dict(StoreSettings, self.store, where="store")
        if not self.dictionaries:
            raise ConfigError("dictionaries must configure at least one dictionary")
        for name in self.dictionaries:
            self.dictionary_config(name, d_model=64)

    def dictionary_config(self, name: str, d_model: int) -> Any:
        import probes.dictionaries as pd

        spec = dict(self.dictionaries[name])
        kind = spec.pop("kind", None)
        if kind not in KINDS:
            raise ConfigError(f"dictionaries[{name!r}].kind must be one of {sorted(KINDS)}, got {kind!r}")
        return config_from_dict(getattr(pd, KINDS[kind]), {**spec, "d_model": d_model}, where=f"dictionaries[{name!r}]")


def texts_sha256(texts: Sequence[str]) -> str:
    """sha256 of the texts as JSON lines (the store's corpus identity)."""
    h = hashlib.sha256()
    for t in texts:
        h.update((json.dumps(t, ensure_ascii=False) + "\n").encode())
    return h.hexdigest()


def _train_or_load(name: str, cfg: Any, store: Any, site: str, s: PairRunSettings, out: Path, log: Callable[[str], None]) -> tuple[Any, dict]:
    from probes.dictionaries import CrosscoderConfig, Crosscoder, DiffSAE, load_dictionary, save_dictionary, train_dictionary

    folder = out / name
    if (folder / "training.json").is_file():
        return load_dictionary(folder), json.loads((folder / "training.json").read_text())
    model = (Crosscoder if isinstance(cfg, CrosscoderConfig) else DiffSAE)(cfg)
    t = s.train
    epochs = math.ceil(t.steps * t.batch_tokens / max(store.n_tokens, 1)) + 1
    log(f"      training {name} ({type(model).__name__}, {cfg.n_latents} latents, {cfg.objective}) for {t.steps} steps of {t.batch_tokens} tokens")
    hist = train_dictionary(model, store.batches(site, t.batch_tokens, seed=t.seed, epochs=epochs), steps=t.steps, lr=t.lr,
                            seed=t.seed, warmup_steps=min(t.warmup_steps, t.steps // 2))
    summary = {k: hist[k] for k in ("steps_run", "tokens", "seconds", "tokens_per_s", "threshold")}
    summary["final_loss"] = float(sum(hist["loss"][-20:]) / len(hist["loss"][-20:]))
    summary["loss_curve"] = hist["loss"][:: max(1, len(hist["loss"]) // 100)]
    save_dictionary(model, folder)
    from workbench.artifacts import atomic_write_json

    atomic_write_json(folder / "training.json", summary)
    return model, summary


@torch.no_grad()
def _mass(model: Any, store: Any, site: str, batch_tokens: int) -> torch.Tensor:
    """Σ over stored tokens of each latent's activation ``[n_latents]`` (float64)."""
    model.eval()
    total = torch.zeros(model.config.n_latents, dtype=torch.float64)
    for _start, batch in store.ordered(site, batch_tokens):
        total += model(batch).latents.double().sum(0).cpu()
    return total


def _context_text(store: Any, tokenizer: Any, index: int, pos: int, window: int) -> str:
    """The stored token ``index`` (at position ``pos`` of its row) in its context, the token marked ``⟦…⟧``."""
    ids = store.context(index, window)
    i = min(window, pos)
    return tokenizer.decode(ids[:i]) + "⟦" + tokenizer.decode(ids[i:i + 1]) + "⟧" + tokenizer.decode(ids[i + 1:])


def read_latents(model: Any, latents: Sequence[int], store: Any, site: str, pair: Any, s: ViewSettings, batch_tokens: int,
                 stream: str, extra: dict[int, dict[str, Any]] | None = None, keywords: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Each latent's decoder tokens (through the tuned model's unembedding) and max-activating contexts."""
    from probes.dictionaries import decoder_logit_lens, max_activating
    from studies.diffing_benchmark.scoring import keyword_hit

    if not latents:
        return []
    tok = pair.tokenizer
    rows = model.decoder_directions(stream)[list(latents)]
    with pair.tuned_context():
        lens = decoder_logit_lens(rows, pair.tuned, s.top_tokens, decode=lambda i: tok.decode([i]))
    tops = max_activating(model, store.ordered(site, batch_tokens), list(latents), s.contexts)
    pos = store.token_info()["pos"]
    out = []
    for j, words in zip(latents, lens):
        contexts = [_context_text(store, tok, i, int(pos[i]), s.context_window) for i, _a in tops[j]]
        row = {"latent": int(j), **(extra or {}).get(int(j), {}), "top_tokens": [w["token"] for w in words],
               "max_activation": tops[j][0][1] if tops[j] else 0.0, "contexts": contexts}
        if keywords:
            row["keyword_tokens"] = sum(keyword_hit(w["token"], keywords) for w in words)
            row["keyword_contexts"] = sum(keyword_hit(c.replace("⟦", " ").replace("⟧", " "), keywords) for c in contexts)
        out.append(row)
    return out


def steer(model: Any, rows: list[dict[str, Any]], pair: Any, layer: int, s: ViewSettings, stream: str, keywords: Sequence[str]) -> list[dict[str, Any]]:
    """Steer the base model with each of the first ``steer_latents`` latents; keyword share steered vs unsteered."""
    from probes.dictionaries import latent_steering_unit, steer_with_latent
    from studies.diffing_benchmark.scoring import score_generations

    out = []
    base = None
    for row in rows[: s.steer_latents]:
        j = row["latent"]
        unit = latent_steering_unit(model, j, row["max_activation"], stream)
        direction = model.decoder_directions(stream)[j]
        kw = dict(n_samples=s.steer_samples, max_new_tokens=s.steer_max_new_tokens, seed=0, prepend_bos=pair.prepend_bos)
        if base is None:
            res = steer_with_latent(pair.base, pair.tokenizer, direction, layer, s.steer_prompts, strength=0.0, unit=unit, **kw)
            base = score_generations([t for p in res["samples"] for t in p["texts"]], keywords)
        by = []
        for strength in s.steer_strengths:
            res = steer_with_latent(pair.base, pair.tokenizer, direction, layer, s.steer_prompts, strength=strength, unit=unit, **kw)
            texts = [t for p in res["samples"] for t in p["texts"]]
            by.append({"strength": strength, **score_generations(texts, keywords), "example": texts[0] if texts else ""})
        out.append({"latent": j, "unit": unit, "unsteered": base, "steered": by})
    return out


def run_pair(pair: Any, texts: Sequence[str], out_dir: str | Path, settings: PairRunSettings, *, keywords: Sequence[str] | None = None,
             log: Callable[[str], None] = log_progress) -> dict[str, Any]:
    """Store, train and read every configured dictionary for ``pair`` over ``texts`` (module docstring); returns the
    JSON-ready record (also written to ``out_dir/dictionaries.json``).

    Raises:
        ConfigError: as :func:`probes.dictionaries.collect_activations` and the dictionaries' configs.
    """
    from probes.dictionaries import ActivationStore, Crosscoder, LatentClassThresholds, StoreSettings, classify_latents
    from probes.dictionaries import collect_activations, evaluate_dictionary, latent_scaling
    from workbench.artifacts import atomic_write_json

    out = Path(out_dir)
    s = settings
    store_settings = config_from_dict(StoreSettings, s.store, where="store")
    layer = store_settings.layers[0]
    site = f"blocks.{layer}.hook_resid_post"
    t0 = time.time()
    collect_activations(pair, texts, out / "store", store_settings, corpus_sha256=texts_sha256(texts), log=log)
    store = ActivationStore(out / "store")
    record: dict[str, Any] = {"layer": layer, "site": site, "n_tokens": store.n_tokens, "store_s": time.time() - t0, "dictionaries": {}}
    log(f"      store: {store.n_tokens} tokens at {site} in {record['store_s']:.0f} s")
    bt = s.train.batch_tokens
    for name in s.dictionaries:
        cfg = s.dictionary_config(name, store.d(site))
        model, training = _train_or_load(name, cfg, store, site, s, out, log)
        ev = evaluate_dictionary(model, (b for _i, b in store.ordered(site, bt)))
        entry: dict[str, Any] = {"kind": s.dictionaries[name]["kind"], "config": cfg.to_dict(), "training": training, "evaluation": ev}
        mass = _mass(model, store, site, bt)
        if isinstance(model, Crosscoder):
            delta = model.relative_decoder_norm().cpu()
            classes = classify_latents(delta, LatentClassThresholds())
            alive = mass > 0
            entry["classes"] = {k: int(v.numel()) for k, v in classes.items()}
            entry["classes_alive"] = {k: int(alive[v].sum()) for k, v in classes.items()}
            entry["delta_histogram"] = torch.histc(delta[alive & ~delta.isnan()], bins=20, min=0, max=1).tolist()
            tuned_only = [int(j) for j in classes["tuned_only"] if alive[j]]
            extra: dict[int, dict[str, Any]] = {}
            kept = []
            if tuned_only:
                ls = latent_scaling(model, (b for _i, b in store.ordered(site, bt)), tuned_only, max_ratio=s.views.ls_max_ratio)
                for j, nu_e, nu_r, keep in zip(ls["latents"].tolist(), ls["nu_error"].tolist(), ls["nu_reconstruction"].tolist(), ls["tuned_only"].tolist()):
                    extra[j] = {"delta": float(delta[j]), "nu_error": nu_e, "nu_reconstruction": nu_r, "mass": float(mass[j])}
                    if keep:
                        kept.append(j)
            n_alive = int(alive.sum())
            entry["latent_scaling"] = {"tuned_only_before": len(tuned_only), "tuned_only_after": len(kept), "alive": n_alive,
                                       "fraction_before": len(tuned_only) / max(n_alive, 1), "fraction_after": len(kept) / max(n_alive, 1),
                                       "max_ratio": s.views.ls_max_ratio}
            chosen, stream = sorted(kept, key=lambda j: -float(mass[j]))[: s.views.top_latents], "tuned"
        else:
            chosen = [int(j) for j in torch.argsort(mass, descending=True)[: s.views.top_latents] if mass[j] > 0]
            extra, stream = {int(j): {"mass": float(mass[j])} for j in chosen}, "diff"
        entry["top_latents"] = read_latents(model, chosen, store, site, pair, s.views, bt, stream, extra, keywords)
        if keywords and s.views.steer_prompts and s.views.steer_latents:
            entry["steering"] = steer(model, entry["top_latents"], pair, layer, s.views, stream, keywords)
        fve = ", ".join(f"{k} {v:.3f}" for k, v in ev["fraction_variance_explained"].items())
        log(f"      {name}: variance explained {fve}; L0 {ev['mean_l0']:.1f}; dead {ev['dead_fraction']:.1%}")
        record["dictionaries"][name] = entry
    atomic_write_json(out / "dictionaries.json", record)
    return record
