"""Word-level tokenizer over a closed vocabulary (the tabletop world's words). numpy only."""

from __future__ import annotations

import re

import numpy as np

PAD_ID = 0
UNK_ID = 1
_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    def __init__(self, vocabulary):
        self.vocabulary = tuple(vocabulary)
        self._ids = {w: i + 2 for i, w in enumerate(self.vocabulary)}

    @staticmethod
    def words(text: str) -> list[str]:
        """Lower-cased words with punctuation stripped: "Visit red, then blue." -> [visit, red, then, blue]."""
        return _WORD.findall(text.lower())

    def encode(self, text: str, length: int) -> np.ndarray:
        """int64[length]: word ids, then PAD_ID. Unknown words map to UNK_ID; too many words is an error."""
        words = self.words(text)
        if len(words) > length:
            raise ValueError(f"text has {len(words)} words, more than the {length} tokens allowed: {text!r}")
        ids = np.full(length, PAD_ID, dtype=np.int64)
        ids[: len(words)] = [self._ids.get(w, UNK_ID) for w in words]
        return ids

    def decode(self, ids) -> str:
        names = {i: w for w, i in self._ids.items()}
        return " ".join(names.get(int(i), "<unk>") for i in ids if int(i) != PAD_ID)
