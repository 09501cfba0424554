"""Tiny saved models for driving the app without the real model: the browser test, the Streamlit
``AppTest`` tests, and ``python -m app.latency.bench --tiny`` (a quick run of the benchmark).

Everything is built locally (a random Llama and a byte-level BPE tokenizer trained on three sentences)
and saved with ``save_pretrained``, so ``workbench.models.load_model(directory)`` loads it; nothing is
downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = ["The apple is in Box F, the key is in Box C. Box C contains the key.",
          "Paris is the capital of France. The Eiffel Tower is in Paris.", "Hello world, hello app."]


def save_tiny(directory: Path, seed: int = 0, hidden_size: int = 16, perturb_from: Path | None = None) -> Path:
    """Save a tiny random Llama and a small byte-level BPE tokenizer with ``save_pretrained`` so that
    ``load_model(directory)`` loads them. ``perturb_from``: copy that model and add noise to its weights
    (a "fine-tuned" copy with the same tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from workbench.models.tiny import tiny_llama

    if perturb_from is not None:
        model = AutoModelForCausalLM.from_pretrained(perturb_from)
        tok = AutoTokenizer.from_pretrained(perturb_from)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    else:
        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<unk>", "<s>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        bpe.train_from_iterator(CORPUS * 5, trainer)
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", unk_token="<unk>", bos_token="<s>")
        model = tiny_llama(len(tok), hidden_size=hidden_size, seed=seed, max_position_embeddings=512, attn_implementation=None)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_tiny_run(run_dir: Path, base_dir: Path, heads=((0, 1), (1, 0))) -> Path:
    """A run folder with a LoFiT ``adapter/`` (random offsets) trained "on" the tiny base model."""
    from workbench.methods import save_intervention
    from workbench.methods.lofit import LofitConfig, LofitOffsets
    from workbench.models import load_model

    _, _, info = load_model(base_dir, device="cpu")
    offsets = LofitOffsets(LofitConfig(top_k_heads=len(heads), heads=[list(h) for h in heads], init_std=0.5), info.to_dict(),
                           generator=torch.Generator().manual_seed(0))
    save_intervention(run_dir / "adapter", offsets, info)
    return run_dir


def quickstart_like_record(n_layers: int = 2, n_heads: int = 2, n_pos: int = 5) -> dict:
    """A results.json record with the main job's layout (small numbers), for the run-results view."""
    acc = lambda a: {"accuracy": a, "accuracy_among_objects": a, "logit_difference": a}  # noqa: E731
    grid = lambda r, c: [[0.1 * (i + j) for j in range(c)] for i in range(r)]  # noqa: E731
    metrics = {"base": acc(0.3), "tuned": acc(0.9), "base_accuracy": 0.3, "tuned_accuracy": 0.9, "losses": [1.4, 0.8],
               "details": {"heads": [[1, 0]], "select_losses": [2.0, 1.5], "head_scores": grid(n_layers, n_heads)},
               "evals": [{"step": 1, "accuracy": 0.5, "accuracy_among_objects": 0.6}], "n_trainable_parameters": 8,
               "diff": {"kl": [0.1] * n_pos, "resid_diff_norm": grid(n_layers, n_pos), "resid_rel_diff": grid(n_layers, n_pos),
                        "resid_cosine": grid(n_layers, n_pos), "head_diff_norm": grid(n_layers, n_heads), "n_prompts": 4}}
    from studies.quickstart.study import QuickstartConfig

    config = {**QuickstartConfig.tiny().to_dict(), "model": "tiny", "n_boxes": 3, "study": "quickstart"}  # the quickstart's own layout
    return {"run_info": {"config": config, "finished": "2026-01-01T00:00:00"}, "meta_info": {}, "metrics": metrics}


def write_quickstart_like_results(run_dir: Path) -> Path:
    """Write ``run_dir/results.json`` (:func:`quickstart_like_record`) and its figures, ``figures/*.json``, with
    the quickstart study's own figure functions and writer, as ``workbench quickstart`` does; returns run_dir."""
    from studies.common import write_figure_files
    from studies.quickstart.figures import figures

    record = quickstart_like_record()
    (run_dir / "results.json").write_text(json.dumps(record))
    write_figure_files(figures(record), run_dir / "figures", html=False)
    return run_dir


def make_tiny_pair(root: Path) -> tuple[Path, Path, Path]:
    """``(base_dir, run_dir, runs_root)``: a tiny base, a LoFiT run folder on it with a results.json and its
    figure files."""
    base = save_tiny(Path(root) / "base")
    run = write_quickstart_like_results(save_tiny_run(Path(root) / "runs" / "tiny-run", base))
    return base, run, Path(root) / "runs"
