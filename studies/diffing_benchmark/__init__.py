"""Diffing benchmark: fine-tune SmolLM2-135M on model organisms whose objective is known (``organisms.py``), then
score what each base-vs-tuned diffing readout reveals by keyword hits against a control fine-tune (``scoring.py``).

After Minder et al. 2025, "Narrow Finetuning Leaves Clearly Readable Traces in Activation Differences",
arXiv 2510.13900, with a keyword rule in place of their LLM judge.
"""
