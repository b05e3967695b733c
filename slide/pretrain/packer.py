"""Documents of a mixture -> fixed-length training rows, the two ways GLM-4.5 packs.

truncate (pre-training): documents, in the order drawn, fill rows back to back; the one that reaches a row's end is
  cut there and its rest starts the next row. Nothing is padded or dropped.
best-fit (mid-training): enough documents to fill the batch (and one row more) are packed best-fit decreasing
  (slide/packing.py), none split where it fits a row (longer ones are cut into row-sized pieces first); the
  fullest rows train now, the documents of the others wait for the next batch.

Either way each piece attends only to itself (slide/packing.py's block-diagonal mask). Documents still waiting
(a cut one's rest, best-fit's leftovers) are part of the state a checkpoint keeps.
"""
from __future__ import annotations

from slide.packing import Doc, best_fit
from slide.pretrain.streams import Mixture


def encode(tok, text: str) -> list[int]:
    """A document's token ids, ended by the tokenizer's end-of-text token (the model learns where text stops)."""
    return tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]


class Packer:
    def __init__(self, mixture: Mixture, tok, seq_len: int, mode: str):
        self.mixture, self.tok, self.seq_len, self.mode = mixture, tok, seq_len, mode
        self.waiting: list[list[int]] = []  # token ids of documents (or their rests) drawn but not yet trained

    def _draw(self) -> list[int]:
        return encode(self.tok, self.mixture.next()[1])

    def rows(self, n: int) -> list[list[Doc]]:
        """The next `n` rows, each a list of (ids, loss mask) documents."""
        return self._truncate(n) if self.mode == "truncate" else self._best_fit(n)

    def _truncate(self, n: int) -> list[list[Doc]]:
        rows = []
        for _ in range(n):
            row, room = [], self.seq_len
            while room > 0:
                ids = self.waiting.pop(0) if self.waiting else self._draw()
                if len(ids) > room:
                    self.waiting.insert(0, ids[room:])
                    ids = ids[:room]
                row.append((ids, [1] * len(ids)))
                room -= len(ids)
            rows.append(row)
        return rows

    def _best_fit(self, n: int) -> list[list[Doc]]:
        L = self.seq_len
        docs, total = list(self.waiting), sum(len(d) for d in self.waiting)
        while total < (n + 1) * L:
            ids = self._draw()
            docs.append(ids)
            total += len(ids)
        pieces = [d[i:i + L] for d in docs for i in range(0, len(d), L)]  # only documents longer than a row cut
        packed = best_fit([(p, [1] * len(p)) for p in pieces], L)
        self.waiting = [ids for row in packed[n:] for ids, _ in row]
        return packed[:n]

    def state(self) -> dict:
        return {"waiting": [list(d) for d in self.waiting], "mixture": self.mixture.state()}

    def load(self, state: dict) -> None:
        self.waiting = [list(d) for d in state["waiting"]]
        self.mixture.load(state["mixture"])
