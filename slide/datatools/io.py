"""Read a dataset as flat rows; write one atomically, never over its input.

    rows = read_rows("in.jsonl")            # [{"prompt", "answer", "level", ...extra fields}]
    write_rows(rows, "out.parquet", source="in.jsonl")

Reading goes through slide.tasks.dataset.load_rows, so a row a trainer would reject is rejected here
with the same message; `answer` comes back as text and `level` defaults to 1. Writing goes to a
temporary file in OUT's folder, then `os.replace`: a crash leaves the old OUT (if any) intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from slide.errors import UserError
from slide.tasks.dataset import EXTENSIONS, load_rows


def _one_line(text, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _drop_nulls(fields: dict) -> dict:
    """Parquet cannot tell a field a row lacks from a null: a column (or struct member) that only other rows
    have reads back as None. Drop those again, one level deep, so JSONL -> Parquet -> JSONL keeps a row's shape."""
    return {k: {m: x for m, x in v.items() if x is not None} if isinstance(v, dict) else v
            for k, v in fields.items() if v is not None}


def read_rows(path: str) -> list[dict]:
    """Validated rows of a .jsonl/.parquet file, flat: prompt, answer (text), level, then every extra field
    (from Parquet, null extra fields and null members of struct fields are left out)."""
    parquet = path.lower().endswith(".parquet")
    return [{"prompt": r["prompt"], "answer": r["answer"], "level": r["level"],
             **(_drop_nulls(r["meta"]) if parquet else r["meta"])} for r in load_rows(path)]


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_output(out: str, source: str | None = None) -> None:
    """One-line UserError unless `out` is a .jsonl/.parquet file path other than `source` (call before any work)."""
    ext = os.path.splitext(out)[1].lower()
    if ext not in EXTENSIONS:
        raise UserError(f"output '{out}': unknown extension '{ext}' (allowed: .jsonl, .parquet)")
    if source is not None and _same_file(out, source):
        raise UserError(f"output '{out}' is the input file; give a new OUT path (the input is never overwritten)")
    if os.path.isdir(out):
        raise UserError(f"output '{out}' is a folder; give a file path ending in .jsonl or .parquet")


def _write_jsonl(rows: list[dict], f) -> None:
    for row in rows:
        # default=str: a Parquet date or decimal survives as text rather than failing the whole write.
        f.write(json.dumps(row, ensure_ascii=False, default=str).encode("utf-8") + b"\n")


def _write_parquet(rows: list[dict], path: str, out: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Columns are the union of every row's fields (pa.Table.from_pylist would take the first row's only).
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {}
    for name in names:
        try:
            columns[name] = pa.array([row.get(name) for row in rows])
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise UserError(f"output '{out}': field '{name}' cannot be a Parquet column ({_one_line(exc)}); "
                            "write .jsonl instead") from None
    try:
        pq.write_table(pa.table(columns), path)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise UserError(f"output '{out}': cannot write Parquet ({_one_line(exc)}); write .jsonl instead") from None


def write_rows(rows: list[dict], out: str, source: str | None = None) -> None:
    """Write `rows` to `out` (.jsonl, or Parquet for .parquet) via a temporary file and a rename."""
    check_output(out, source)
    folder = Path(out).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{Path(out).name}.", suffix=".tmp")
    try:
        if out.lower().endswith(".parquet"):
            os.close(fd)
            _write_parquet(rows, tmp, out)
        else:
            with os.fdopen(fd, "wb") as f:
                _write_jsonl(rows, f)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
