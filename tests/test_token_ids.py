"""Token-id input normalisation (``workbench.data.as_token_ids``): every accepted form becomes one ``long`` tensor;
everything else is one ConfigError that says what to do (split from ``tests/test_boundaries.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.data import as_token_ids
from workbench.errors import ConfigError


@pytest.mark.parametrize("bad, kw, fragment", [
    (None, {}, "must be token ids"),
    ("the cat", {}, "tokenize text first"),
    ([[1, 2], [3]], {}, "rectangular"),
    ([[1, "a"]], {}, "rectangular"),
    ([1, 2, 3], {}, "wrap it: [ids]"),
    ([], {}, "2 axes"),
    ([[]], {}, "is empty"),
    (torch.zeros(2, 3), {}, "integer token ids"),
    ([[1.5, 2.0]], {}, "integer token ids"),
    (torch.ones(1, 2, dtype=torch.bool), {}, "integer token ids"),
    ([[1, -1]], {}, "negative token id"),
    ([[1, 99]], {"vocab_size": 64}, "outside the vocabulary of 64"),
    ([[1, 2]], {"ndim": 1, "name": "correct"}, "correct must have 1 axes"),
])
def test_as_token_ids_refuses(bad, kw, fragment):
    with pytest.raises(ConfigError) as ei:
        as_token_ids(bad, **kw)
    assert fragment in str(ei.value)


@pytest.mark.parametrize("good", [[[1, 2], [3, 4]], ((1, 2), (3, 4)), np.array([[1, 2], [3, 4]], dtype=np.int32),
                                  torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)])
def test_as_token_ids_accepts(good):
    t = as_token_ids(good, vocab_size=64)
    assert t.dtype == torch.long and torch.equal(t, torch.tensor([[1, 2], [3, 4]]))
