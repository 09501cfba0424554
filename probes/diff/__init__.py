"""Dataset-level model diffing: stream a corpus through a base and a tuned model and measure, with running sums,
where they differ (one file per noun, each with its definitions and sources).

* :mod:`.corpus` — :func:`diff_corpus`, the streaming pass (one forward of each model per batch);
* :mod:`.kl` — per-token KL(tuned ‖ base), top-KL positions in context;
* :mod:`.mining` — vocabulary tokens whose probability rises / falls most;
* :mod:`.layers` — per-layer residual and per-head output differences with 95% CIs over rows;
* :mod:`.lens` — logit-lens agreement per layer for both models;
* :mod:`.adl` — the Activation Difference Lens (Minder et al. 2025): one δ_j per position and its logit lens;
  :mod:`.patchscope`, :mod:`.steering` — its other readouts; :mod:`.adl_readouts` — all of them per position;
* :mod:`.prompts` — the same measures on a few prompts (the quickstart, the app): per-token KL, residual and head
  differences;
* :mod:`.stats` — running means with CIs, streaming top-k.
"""

from probes.diff.adl import DeltaAccumulator, default_layer, lens_tokens
from probes.diff.adl_readouts import AdlSettings, adl_readouts
from probes.diff.patchscope import patchscope
from probes.diff.steering import steering_search
from probes.diff.corpus import CorpusDiff, DiffSettings, diff_corpus, token_rows
from probes.diff.kl import KLStats, token_kl
from probes.diff.layers import LayerStats, check_layer, head_diff_norm, resid_diff
from probes.diff.lens import LensStats, lens_agreement
from probes.diff.mining import TokenShift
from probes.diff.stats import RowMean, StreamingTopK, TokenMean

__all__ = ["AdlSettings", "CorpusDiff", "DeltaAccumulator", "adl_readouts", "default_layer", "DiffSettings", "KLStats", "LayerStats", "LensStats", "RowMean",
           "StreamingTopK", "TokenMean", "TokenShift", "check_layer", "diff_corpus", "head_diff_norm", "lens_agreement",
           "lens_tokens", "patchscope", "resid_diff", "steering_search", "token_kl", "token_rows"]
