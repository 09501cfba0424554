"""Sparse dictionaries (crosscoders, difference SAEs) and edge attribution on real fine-tunes (``python -m studies.dictionaries``)."""
