"""Finding the directions CAFT ablates.

Source: Casademunt et al., arXiv 2507.16795, 2025, §3.1–3.2 and App. B:

* **PCA** (:func:`pca_directions`): run the base and a normally fine-tuned model on the same prompts, take
  per-token residual differences (tuned − base) at ``hook_resid_post`` on the answer tokens, and PCA them
  per layer (≈ 20 components). The authors keep the components they interpret as the unwanted concept by
  hand; :func:`choose_concept_components` offers an automatic choice (how well each component's 1-D
  projection separates concept-labelled prompts, cross-validated ROC AUC), with a manual override.
* **User directions**: :func:`difference_of_means`, :func:`probe_direction` (scikit-learn logistic
  regression), or any tensor.
* **Baseline**: :func:`random_directions` (the paper's random-direction control).

SAE latents (the paper's other source) are not offered: they need trained SAEs for the model.
All directions are returned as rows ``[k, d_model]``; :class:`~workbench.methods.caft.CaftIntervention`
orthonormalises them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from workbench.data import right_pad
from workbench.errors import ConfigError
from workbench.hooked import record
from workbench.sites import Site


@torch.no_grad()
def residuals(
    model: nn.Module,
    prompts_ids: Sequence[Sequence[int]],
    layers: Sequence[int],
    positions: Sequence[Sequence[int]] | None = None,
    *,
    intervention: nn.Module | None = None,
    batch_size: int = 32,
    pad_id: int = 0,
) -> dict[int, Float[Tensor, "n_tokens d_model"]]:
    """Residual stream ``blocks.{l}.hook_resid_post`` (fp32, CPU) at chosen token positions.

    Args:
        prompts_ids: token ids per prompt (right-padded internally; attention mask set).
        positions: per prompt, the positions to read (negative counts from that prompt's end);
            ``None`` = the last token of each prompt.
        intervention: attached while reading (e.g. LoFiT offsets that turn ``model`` into the tuned model).

    Returns:
        ``{layer: [n_tokens, d_model]}``, rows in prompt order then position order.

    Raises:
        ConfigError: no prompts, a position outside its prompt, or a layer the model does not have.
    """
    if not prompts_ids:
        raise ConfigError("residuals() needs at least one prompt")
    positions = [[-1]] * len(prompts_ids) if positions is None else positions
    if len(positions) != len(prompts_ids):
        raise ConfigError(f"{len(positions)} position lists for {len(prompts_ids)} prompts")
    resolved = []
    for ids, pos in zip(prompts_ids, positions):
        n = len(ids)
        if any(not -n <= p < n for p in pos):
            raise ConfigError(f"positions {list(pos)} fall outside a prompt of {n} tokens")
        resolved.append([p % n for p in pos])
    layers = sorted({int(l) for l in layers})
    device = next(model.parameters()).device
    out: dict[int, list[Tensor]] = {l: [] for l in layers}
    for start in range(0, len(prompts_ids), batch_size):
        chunk = prompts_ids[start : start + batch_size]
        rows = [(i, p) for i, pos in enumerate(resolved[start : start + batch_size]) for p in pos]
        ids, mask, _ = right_pad(chunk, pad_id)
        bi = torch.tensor([r[0] for r in rows])
        pi = torch.tensor([r[1] for r in rows])

        sites = {layer: Site(layer, "hook_resid_post") for layer in layers}
        # the intervention's hooks go first, so that the readers see the intervened residual; stop=True skips
        # the layers above the deepest one needed
        with intervention.attach(model) if intervention is not None else nullcontext(), \
                record(model, list(sites.values()), select=lambda a, r=bi, p=pi: a[r.to(a.device), p.to(a.device)],
                       dtype=torch.float32, device="cpu", stop=True) as rec:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
        for layer, site in sites.items():
            out[layer].append(rec[site])
    return {l: torch.cat(v) for l, v in out.items()}


@dataclass
class PcaResult:
    """PCA of tuned − base residual differences at one layer.

    ``components``: ``Float[Tensor, "n_components d_model"]`` unit rows, by decreasing variance;
    ``explained_variance_ratio``: ``Float[Tensor, " n_components"]`` (fraction of the difference variance);
    ``mean_difference``: ``Float[Tensor, " d_model"]`` (removed before PCA when ``center=True``);
    ``n_tokens``: number of difference vectors.
    """

    components: Tensor
    explained_variance_ratio: Tensor
    mean_difference: Tensor
    n_tokens: int


def pca_directions(
    base: nn.Module,
    tuned: nn.Module,
    prompts_ids: Sequence[Sequence[int]],
    answer_positions: Sequence[Sequence[int]] | None,
    layers: Sequence[int],
    n_components: int = 20,
    *,
    tuned_intervention: nn.Module | None = None,
    center: bool = True,
    batch_size: int = 32,
    pad_id: int = 0,
) -> dict[int, PcaResult]:
    """Per layer, PCA (scikit-learn) of per-token residual differences tuned − base on the answer tokens.

    Casademunt et al. 2025, §3.1. ``base`` and ``tuned`` may be the same module when ``tuned_intervention``
    (e.g. trained LoFiT offsets) is what makes it the tuned model. ``answer_positions`` are per-prompt
    positions (``None`` = last token, the position that predicts a single-token answer).

    Raises:
        ConfigError: ``n_components`` larger than ``min(n_tokens, d_model)``, or see :func:`residuals`.
    """
    from sklearn.decomposition import PCA

    kw = dict(batch_size=batch_size, pad_id=pad_id)
    a = residuals(base, prompts_ids, layers, answer_positions, **kw)
    b = residuals(tuned, prompts_ids, layers, answer_positions, intervention=tuned_intervention, **kw)
    out = {}
    for layer in a:
        diff = (b[layer] - a[layer]).double().numpy()
        if not 1 <= n_components <= min(diff.shape):
            raise ConfigError(f"n_components={n_components} must be in 1..{min(diff.shape)} "
                              f"({diff.shape[0]} answer tokens, d_model {diff.shape[1]}); use more prompts or fewer components")
        if center:
            mean = diff.mean(0)
            pca = PCA(n_components=n_components, svd_solver="full").fit(diff)
            comps, ratio = pca.components_, pca.explained_variance_ratio_
        else:  # uncentred: SVD of the raw differences (keeps the mean shift as a component)
            mean = np.zeros(diff.shape[1])
            _, s, vt = np.linalg.svd(diff, full_matrices=False)
            comps, ratio = vt[:n_components], (s**2 / (s**2).sum())[:n_components]
        out[layer] = PcaResult(torch.tensor(comps, dtype=torch.float32), torch.tensor(ratio, dtype=torch.float32),
                               torch.tensor(mean, dtype=torch.float32), diff.shape[0])
    return out


@dataclass
class ComponentChoice:
    """Outcome of :func:`choose_concept_components` at one layer.

    ``indices``: the chosen component indices (top ``top_n`` by score, or the manual override);
    ``ranking``: every index, best first; ``scores``: ``Float[Tensor, " n_components"]`` cross-validated ROC
    AUC of a 1-D logistic regression on each component's projection (0.5 = no separation, 1 = perfect).
    """

    indices: list[int]
    ranking: list[int]
    scores: Tensor


def component_scores(projections: Float[Tensor, "n_prompts n_components"], labels: Sequence[int], *, cv_folds: int = 5, seed: int = 0) -> Float[Tensor, " n_components"]:
    """Cross-validated ROC AUC of a 1-D logistic regression per column of ``projections``.

    Raises:
        ConfigError: labels that are not two classes with at least ``cv_folds`` examples each.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) != 2 or counts.min() < cv_folds or len(y) != projections.shape[0]:
        raise ConfigError(f"need two label classes with >= {cv_folds} prompts each and one label per prompt; "
                          f"got classes {classes.tolist()} with counts {counts.tolist()} for {projections.shape[0]} prompts")
    x = projections.double().numpy()
    x = (x - x.mean(0)) / (x.std(0) + 1e-12)
    cv = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    scores = [cross_val_score(LogisticRegression(), x[:, [j]], y, cv=cv, scoring="roc_auc").mean() for j in range(x.shape[1])]
    return torch.tensor(scores, dtype=torch.float32)


def choose_concept_components(
    components: Float[Tensor, "n_components d_model"] | PcaResult,
    base_model: nn.Module,
    layer: int,
    concept_prompts_ids: Sequence[Sequence[int]],
    concept_labels: Sequence[int],
    top_n: int,
    *,
    positions: Sequence[Sequence[int]] | None = None,
    indices: Sequence[int] | None = None,
    cv_folds: int = 5,
    seed: int = 0,
    batch_size: int = 32,
) -> ComponentChoice:
    """Rank PCA components by how well they carry a concept; keep the best ``top_n`` (or ``indices``).

    The base model's ``blocks.{layer}.hook_resid_post`` of each concept prompt is projected on every
    component, at ``positions`` (per prompt, the same count for every prompt; projections averaged; ``None``
    = the last token) — read the concept where it is written, e.g. at the gendered words; each component
    is scored by :func:`component_scores`. This automates the paper's manual interpretation step
    (Casademunt et al. 2025, §3.1, where PCs are interpreted from the tokens that activate them); pass
    ``indices`` to override.

    Raises:
        ConfigError: ``top_n`` outside 1..n_components, an override index out of range, unequal position
            counts, or bad labels.
    """
    comps = components.components if isinstance(components, PcaResult) else components
    n = comps.shape[0]
    if indices is None and not 1 <= top_n <= n:
        raise ConfigError(f"top_n={top_n} must be in 1..{n}")
    if indices is not None and any(not 0 <= int(i) < n for i in indices):
        raise ConfigError(f"component indices {list(indices)} out of range 0..{n - 1}")
    n_pos = 1 if positions is None else len(positions[0])
    if positions is not None and any(len(p) != n_pos for p in positions):
        raise ConfigError("every concept prompt needs the same number of positions")
    acts = residuals(base_model, concept_prompts_ids, [layer], positions, batch_size=batch_size)[layer]
    proj = (acts @ comps.float().T).unflatten(0, (len(concept_prompts_ids), n_pos)).mean(1)
    scores = component_scores(proj, concept_labels, cv_folds=cv_folds, seed=seed)
    ranking = [int(i) for i in torch.argsort(scores, descending=True, stable=True)]
    chosen = [int(i) for i in indices] if indices is not None else ranking[:top_n]
    return ComponentChoice(chosen, ranking, scores)


def _check_acts(acts: Tensor, name: str) -> Tensor:
    if acts.ndim != 2 or acts.shape[0] < 1:
        raise ConfigError(f"{name} must be a non-empty [n, d_model] tensor, got shape {tuple(acts.shape)}")
    return acts.double()


def difference_of_means(acts_a: Float[Tensor, "n_a d_model"], acts_b: Float[Tensor, "n_b d_model"]) -> Float[Tensor, " d_model"]:
    """Unit vector along ``mean(acts_a) − mean(acts_b)`` (fp32).

    Raises:
        ConfigError: empty or non-2-D inputs, different widths, or equal means.
    """
    a, b = _check_acts(acts_a, "acts_a"), _check_acts(acts_b, "acts_b")
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"acts_a and acts_b have widths {a.shape[1]} and {b.shape[1]}")
    d = a.mean(0) - b.mean(0)
    if float(d.norm()) == 0:
        raise ConfigError("the two groups have identical means; there is no direction to take")
    return (d / d.norm()).float()


def probe_direction(acts: Float[Tensor, "n d_model"], labels: Sequence[int], *, c: float = 1.0) -> Float[Tensor, " d_model"]:
    """Unit-norm coefficient vector of a scikit-learn ``LogisticRegression(C=c)`` probe (fp32).

    Raises:
        ConfigError: not exactly two label classes, or a label count that differs from ``acts``.
    """
    from sklearn.linear_model import LogisticRegression

    x = _check_acts(acts, "acts").numpy()
    y = np.asarray(labels)
    if len(y) != x.shape[0] or len(np.unique(y)) != 2:
        raise ConfigError(f"probe_direction needs one label per row and exactly two classes; got {len(y)} labels, "
                          f"classes {np.unique(y).tolist()}")
    w = torch.tensor(LogisticRegression(C=c, max_iter=2000).fit(x, y).coef_[0])
    if float(w.norm()) == 0:
        raise ConfigError("the probe learned a zero direction (labels not separable at all); use more data or a larger c")
    return (w / w.norm()).float()


def random_directions(d_model: int, k: int, seed: int) -> Float[Tensor, "k d_model"]:
    """``k`` orthonormal directions drawn uniformly (QR of a seeded Gaussian): the random-direction baseline.

    Raises:
        ConfigError: ``k`` outside 1..d_model.
    """
    if not 1 <= k <= d_model:
        raise ConfigError(f"k={k} must be in 1..d_model={d_model}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_model, k, generator=g, dtype=torch.float64))
    return q.T.float().contiguous()
