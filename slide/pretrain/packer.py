"""Documents of a mixture -> fixed-length training rows, the two ways GLM-4.5 packs.

truncate (pre-training): documents, in the order drawn, fill rows back to back; the one that reaches a row's end is
  cut there and its rest starts the next row. Nothing is padded or dropped.
best-fit (mid-training): enough documents to fill the batch (and one row more) are packed best-fit decreasing
  (slide/packing.py), none split where it fits a row (longer ones are cut into row-sized pieces first); the rows
  holding the oldest documents train now, the documents of the others wait for the next batch.

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
        # drawn but not yet trained: truncate: token ids of documents (or their rests); best-fit: [document number,
        # piece number, token ids] of row-sized pieces
        self.waiting: list = []
        self.docs = 0  # documents drawn (best-fit's age of a piece)

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
        while sum(len(ids) for _, _, ids in self.waiting) < (n + 1) * L:
            ids = self._draw()  # a document longer than a row is cut into row-sized pieces, in order
            self.waiting += [[self.docs, i // L, ids[i:i + L]] for i in range(0, len(ids), L)]
            self.docs += 1
        age = {id(ids): (doc, piece) for doc, piece, ids in self.waiting}
        packed = best_fit([(ids, [1] * len(ids)) for _, _, ids in self.waiting], L)
        # the rows holding the oldest pieces train first: a long document's many full rows never starve the short
        # documents drawn before them (the mixture's shares hold for what is trained, not only for what is drawn)
        packed.sort(key=lambda row: min(age[id(ids)] for ids, _ in row))
        self.waiting = sorted([*age[id(ids)], ids] for row in packed[n:] for ids, _ in row)
        return packed[:n]

    def state(self) -> dict:
        return {"waiting": [list(d) for d in self.waiting], "docs": self.docs, "mixture": self.mixture.state()}

    def load(self, state: dict) -> None:
        self.waiting = [list(d) for d in state["waiting"]]
        self.docs = state["docs"]
        self.mixture.load(state["mixture"])
