"""Documents streamed from files, never loaded whole, and the weighted mixture that draws from them.

A `Stream` reads one source lazily (JSONL line by line from a byte offset, Parquet one row group at a time, a text
folder one file at a time) and can say where it is (`state()`) and go back there (`load()`), so a checkpoint holds
each source's position and a resumed run reads exactly the documents a run never stopped would have read. The
first `held_out` documents of a source are never trained on: they are its held-out set. At its end a stream
starts again after them (the epoch is counted in its state).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from slide.errors import UserError, first_line

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text"}


class JsonlReader:
    """Position: the byte offset of the next line."""

    def __init__(self, path: Path, field: str):
        self.path, self.field = path, field

    def read(self, pos: int) -> tuple[str, int] | None:
        with open(self.path, "rb") as f:
            f.seek(pos)
            while True:
                line = f.readline()
                if not line:
                    return None
                nxt = f.tell()
                if line.strip():
                    return self._text(line, nxt), nxt
                pos = nxt

    def _text(self, line: bytes, at: int) -> str:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.path}: the line ending at byte {at} is not JSON ({first_line(e)})") from None
        if not isinstance(row, dict) or not isinstance(row.get(self.field), str):
            raise UserError(f"{self.path}: the line ending at byte {at} has no string field {self.field!r} "
                            f"(set the source's field)")
        return row[self.field]


class ParquetReader:
    """Position: (row group, row) encoded as group * 2**32 + row; one row group in memory at a time."""

    def __init__(self, path: Path, field: str):
        import pyarrow.parquet as pq
        self.path, self.field = path, field
        try:
            self.file = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise UserError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
        if field not in self.file.schema_arrow.names:
            raise UserError(f"{path}: no column {field!r} (columns: {', '.join(self.file.schema_arrow.names)})")
        self._cache: tuple[int, list] | None = None

    def read(self, pos: int) -> tuple[str, int] | None:
        group, row = divmod(pos, 2 ** 32)
        while group < self.file.num_row_groups:
            if self._cache is None or self._cache[0] != group:
                self._cache = (group, self.file.read_row_group(group, columns=[self.field]).column(0).to_pylist())
            rows = self._cache[1]
            if row < len(rows):
                text = rows[row]
                if not isinstance(text, str):
                    raise UserError(f"{self.path}: row {row} of row group {group}: {self.field!r} is not a string")
                return text, group * 2 ** 32 + row + 1
            group, row = group + 1, 0
        return None


class FolderReader:
    """Position: the index of the next file (sorted paths, text suffixes only); each file is one document."""

    def __init__(self, path: Path):
        self.files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not self.files:
            raise UserError(f"{path}: no text files there ({', '.join(sorted(TEXT_SUFFIXES))})")

    def read(self, pos: int) -> tuple[str, int] | None:
        if pos >= len(self.files):
            return None
        return self.files[pos].read_text(errors="replace"), pos + 1


def open_reader(path: str, field: str):
    p = Path(path)
    if p.is_dir():
        return FolderReader(p)
    if not p.is_file():
        raise UserError(f"data source {path!r}: no such file or folder")
    if p.suffix == ".jsonl":
        return JsonlReader(p, field)
    if p.suffix == ".parquet":
        return ParquetReader(p, field)
    raise UserError(f"data source {path!r}: unknown kind (allowed: .jsonl, .parquet, a folder of text files)")


class Stream:
    """One source's documents in order, its first `held_out` set apart."""

    def __init__(self, path: str, field: str, held_out: int):
        self.reader = open_reader(path, field)
        self.path = path
        self.held_out: list[str] = []
        pos = 0
        for _ in range(held_out):
            got = self.reader.read(pos)
            if got is None:
                break
            self.held_out.append(got[0])
            pos = got[1]
        self.start = pos
        if self.reader.read(pos) is None:
            raise UserError(f"data source {path!r}: {len(self.held_out)} document(s), all held out for evaluation "
                            f"(eval.held_out_docs={held_out}); it needs more")
        self.pos, self.epoch = pos, 0

    def next(self) -> str:
        got = self.reader.read(self.pos)
        if got is None:  # the end: another epoch, after the held-out documents
            self.epoch += 1
            got = self.reader.read(self.start)
        text, self.pos = got
        return text

    def state(self) -> dict:
        return {"pos": self.pos, "epoch": self.epoch}

    def load(self, state: dict) -> None:
        self.pos, self.epoch = state["pos"], state["epoch"]


class Mixture:
    """Draws each next document from a source chosen at random (a seeded generator of its own, saved with the
    streams' positions). A source's weight is its share of the text drawn, not of the documents: a source is chosen
    with probability proportional to weight / mean document length (estimated on its held-out documents), so a
    source of long files gets no more text than its weight says."""

    def __init__(self, names: list[str], streams: list[Stream], weights: list[float], seed: int):
        self.names, self.streams, self.weights = names, streams, weights
        mean_len = [max(1.0, sum(map(len, s.held_out)) / max(1, len(s.held_out))) for s in streams]
        self.chances = [w / n for w, n in zip(weights, mean_len)]
        self.rng = random.Random(seed)
        self.drawn = [0] * len(streams)  # documents drawn per source

    def next(self) -> tuple[int, str]:
        i = self.rng.choices(range(len(self.streams)), weights=self.chances)[0]
        self.drawn[i] += 1
        return i, self.streams[i].next()

    def state(self) -> dict:
        return {"rng": self.rng.getstate(), "drawn": list(self.drawn), "streams": [s.state() for s in self.streams]}

    def load(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.drawn = list(state["drawn"])
        for s, st in zip(self.streams, state["streams"]):
            s.load(st)
