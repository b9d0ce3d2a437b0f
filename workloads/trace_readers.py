"""Readers that turn request-trace files into :class:`RequestTable` objects.

Supported formats
-----------------
``azure``
    Azure LLM inference trace 2023 CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens`` with
    wall-clock timestamps ``YYYY-MM-DD HH:MM:SS.fffffff``.  Timestamps are naive (no time
    zone); they are converted to integer ticks of 100 ns and differenced exactly, so the
    only rounding is the final, correctly-rounded conversion of each offset to float64
    seconds.  Offsets are relative to the earliest row.
``mooncake``
    Mooncake JSON-lines: ``timestamp`` (ms since trace start), ``input_length``,
    ``output_length``, ``hash_ids`` (one id per 512-token prompt block, kept as
    ``prefix_block_ids``); an optional integer ``priority``.
``plain``
    ``.csv`` or ``.parquet`` with columns ``arrival_s, prompt_tokens, output_tokens``
    (seconds and token counts) and an optional integer ``priority`` (lower is served first
    under ``scheduler.policy=priority``; absent: 0) and ``prefix_group`` (requests of one
    group -- a conversation, a session -- share their prompts' common leading tokens, as a
    later turn's prompt holds the earlier turns: unit ``i`` of a group's prompts is the same
    512-token block for all of them; empty or absent: nothing shared); other columns are ignored.

Modelling assumptions and conventions
-------------------------------------
* Rows may be out of time order; every reader sorts them *stably* by arrival, so
  requests with equal timestamps keep their file order (Mooncake multi-turn order).
* Zero prompt or output lengths are clamped up to 1 (a request must prefill at least one
  token and generate at least one) and counted in ``RequestTable.clamped_rows``.  Negative
  or non-integer lengths are errors.
* Blank lines are skipped.  Errors name the file and the 1-based physical line number
  (header = line 1); for Parquet they name the 1-based data row.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from workloads.errors import WorkloadError
from workloads.request_table import PRIORITY_LIMIT, RequestTable

__all__ = [
    "TRACE_FORMATS",
    "read_azure_csv",
    "read_mooncake_jsonl",
    "read_plain",
    "read_trace",
]

TRACE_FORMATS = ("auto", "azure", "mooncake", "plain")

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
PLAIN_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")

_TICKS_PER_S = 10_000_000  # Azure timestamps have 7 fractional digits (100 ns ticks)
_COUNT_RE = re.compile(r"\+?[0-9]+")
_TIMESTAMP_RE = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?")
_TIMESTAMP_FORM = "a timestamp of the form YYYY-MM-DD HH:MM:SS[.fffffff]"


# --------------------------------------------------------------------------- helpers


def _existing_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise WorkloadError(f"trace file {str(p)!r} does not exist")
    if not p.is_file():
        raise WorkloadError(f"trace file {str(p)!r} is not a regular file")
    return p


def _parse_count(text: str, field: str, where: str) -> int:
    """Parse a non-negative integer token count from trace text."""
    s = text.strip()
    if not _COUNT_RE.fullmatch(s):
        raise WorkloadError(f"{where}: {field}={text!r} is not a non-negative integer")
    return _bounded(int(s), field, where, text)


#: The largest token count a trace may give (anything above is a corrupt row, not a request).
MAX_TOKENS = 10**9


def _bounded(value: int, field: str, where: str, text: object) -> int:
    if value > MAX_TOKENS:
        raise WorkloadError(f"{where}: {field}={text!r} is too large; must be an integer between 0 and {MAX_TOKENS:,}")
    return value


def _json_count(value: object, field: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WorkloadError(f"{where}: {field}={value!r} is not a non-negative integer")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise WorkloadError(f"{where}: {field}={value!r} is not a non-negative integer")
    if value < 0:
        raise WorkloadError(f"{where}: {field}={value!r} is not a non-negative integer")
    return _bounded(int(value), field, where, value)


def _clamp_zero_lengths(prompt: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    zero = (prompt == 0) | (output == 0)
    clamped = int(np.count_nonzero(zero))
    if clamped:
        prompt = np.maximum(prompt, 1)
        output = np.maximum(output, 1)
    return prompt, output, clamped


def _build(
    name: str,
    arrival_key: np.ndarray,
    arrival_s: Callable[[np.ndarray], np.ndarray],
    prompt: list[int] | np.ndarray,
    output: list[int] | np.ndarray,
    blocks: list[np.ndarray] | None = None,
    priority: list[int] | np.ndarray | None = None,
) -> RequestTable:
    """Sort stably by ``arrival_key``, clamp zero lengths and build the table."""
    if arrival_key.size == 0:
        raise WorkloadError(f"{name}: trace has no requests; must contain at least 1 data row")
    order = np.argsort(arrival_key, kind="stable")
    key = arrival_key[order]
    prompt_arr = np.asarray(prompt, dtype=np.int64)[order]
    output_arr = np.asarray(output, dtype=np.int64)[order]
    prompt_arr, output_arr, clamped = _clamp_zero_lengths(prompt_arr, output_arr)
    ordered_blocks = None if blocks is None else tuple(blocks[i] for i in order)
    return RequestTable(
        arrival_s=arrival_s(key - key[0]),
        prompt_tokens=prompt_arr,
        output_tokens=output_arr,
        source=name,
        prefix_block_ids=ordered_blocks,
        priority=None if priority is None else np.asarray(priority, dtype=np.int64)[order],
        clamped_rows=clamped,
        rebased_s=float(arrival_s(key[:1])[0]),   # the first arrival in the trace's own clock
    )


def _csv_rows(path: Path) -> tuple[Iterable[list[str]], list[str], Callable[[], int], object]:
    handle = path.open("r", newline="", encoding="utf-8-sig")
    reader = csv.reader(handle)
    header: list[str] | None = None
    for row in reader:
        if row and any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            break
    if header is None:
        handle.close()
        raise WorkloadError(f"{path.name}: file is empty; expected a header row and at least 1 data row")
    return reader, header, lambda: reader.line_num, handle


def _column_indices(path: Path, header: list[str], required: tuple[str, ...]) -> list[int]:
    indices = []
    for column in required:
        if column not in header:
            raise WorkloadError(
                f"{path.name}: missing column {column!r}; found {header}, required {list(required)}"
            )
        indices.append(header.index(column))
    return indices


# --------------------------------------------------------------------------- Azure


def _timestamp_ticks(text: str, where: str, day_cache: dict[str, int]) -> int:
    match = _TIMESTAMP_RE.fullmatch(text.strip())
    if match is None:
        raise WorkloadError(f"{where}: TIMESTAMP={text!r} is not {_TIMESTAMP_FORM}")
    day, hh, mm, ss, frac = match.groups()
    ordinal = day_cache.get(day)
    if ordinal is None:
        try:
            ordinal = _dt.date.fromisoformat(day).toordinal()
        except ValueError:
            raise WorkloadError(f"{where}: TIMESTAMP={text!r} is not {_TIMESTAMP_FORM}") from None
        day_cache[day] = ordinal
    h, m, s = int(hh), int(mm), int(ss)
    if h > 23 or m > 59 or s > 60:
        raise WorkloadError(f"{where}: TIMESTAMP={text!r} is not {_TIMESTAMP_FORM}")
    ticks = int(frac.ljust(7, "0")) if frac else 0
    return ((ordinal * 86_400) + h * 3600 + m * 60 + s) * _TICKS_PER_S + ticks


def _data_rows(p: Path, reader, width: int, line_num):
    """Non-blank CSV rows with their ``file line N`` location; a row of the wrong width is an error."""
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        where = f"{p.name} line {line_num()}"
        if len(row) != width:
            raise WorkloadError(f"{where}: has {len(row)} fields; the header has {width}")
        yield row, where


def read_azure_csv(path: str | Path) -> RequestTable:
    """Read an Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    p = _existing_file(path)
    reader, header, line_num, handle = _csv_rows(p)
    with handle:  # type: ignore[attr-defined]
        t_col, c_col, g_col = _column_indices(p, header, AZURE_COLUMNS)
        width = len(header)
        ticks: list[int] = []
        prompt: list[int] = []
        output: list[int] = []
        day_cache: dict[str, int] = {}
        for row, where in _data_rows(p, reader, width, line_num):
            ticks.append(_timestamp_ticks(row[t_col], where, day_cache))
            prompt.append(_parse_count(row[c_col], "ContextTokens", where))
            output.append(_parse_count(row[g_col], "GeneratedTokens", where))
    key = np.asarray(ticks, dtype=np.int64)
    return _build(p.name, key, lambda rel: rel / _TICKS_PER_S, prompt, output)


# --------------------------------------------------------------------------- Mooncake


def read_mooncake_jsonl(path: str | Path) -> RequestTable:
    """Read a Mooncake JSON-lines trace; ``hash_ids`` become ``prefix_block_ids``."""
    p = _existing_file(path)
    times_ms: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    blocks: list[np.ndarray] = []
    priority: list[int] = []
    with p.open("r", encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{p.name} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"{where}: invalid JSON ({exc.msg}); expected one JSON object per line") from None
            if not isinstance(record, dict):
                raise WorkloadError(f"{where}: {type(record).__name__} found; expected a JSON object")
            for key in MOONCAKE_KEYS:
                if key not in record:
                    raise WorkloadError(f"{where}: missing key {key!r}; required keys {list(MOONCAKE_KEYS)}")
            ts = record["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
                raise WorkloadError(f"{where}: timestamp={ts!r} is not a finite number of milliseconds >= 0")
            times_ms.append(ts)
            prompt.append(_json_count(record["input_length"], "input_length", where))
            output.append(_json_count(record["output_length"], "output_length", where))
            ids = record["hash_ids"]
            if not isinstance(ids, list):
                raise WorkloadError(f"{where}: hash_ids={ids!r} is not a list of integers")
            ids_arr = np.asarray(ids) if ids else np.zeros(0, dtype=np.int64)
            if ids_arr.ndim != 1 or ids_arr.dtype.kind not in "iu" or any(isinstance(i, bool) for i in ids):
                raise WorkloadError(f"{where}: hash_ids={ids!r:.80} is not a list of integers")
            blocks.append(ids_arr.astype(np.int64))
            priority.append(_priority(record.get("priority", 0), where))
    if all(isinstance(t, int) for t in times_ms):
        # Integer milliseconds: exact differences, one correctly rounded division.
        keys = np.asarray(times_ms, dtype=np.int64)
    else:
        keys = np.asarray(times_ms, dtype=np.float64)
    return _build(p.name, keys, lambda rel: rel / 1000.0, prompt, output, blocks,
                  priority if any(priority) else None)


# --------------------------------------------------------------------------- plain


def _parse_seconds(text: str, where: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise WorkloadError(f"{where}: arrival_s={text!r} is not a finite number of seconds >= 0")
    return value


def _read_plain_csv(p: Path) -> RequestTable:
    reader, header, line_num, handle = _csv_rows(p)
    with handle:  # type: ignore[attr-defined]
        a_col, i_col, o_col = _column_indices(p, header, PLAIN_COLUMNS)
        names = [h.strip() for h in header]
        p_col = names.index("priority") if "priority" in names else None
        g_col = names.index("prefix_group") if "prefix_group" in names else None
        groups: list[int | None] = []
        width = len(header)
        arrival: list[float] = []
        prompt: list[int] = []
        output: list[int] = []
        priority: list[int] = []
        for row, where in _data_rows(p, reader, width, line_num):
            arrival.append(_parse_seconds(row[a_col], where))
            prompt.append(_parse_plain_count(row[i_col], "prompt_tokens", where))
            output.append(_parse_plain_count(row[o_col], "output_tokens", where))
            if p_col is not None:
                priority.append(_priority(row[p_col].strip(), where))
            if g_col is not None:
                text = row[g_col].strip()
                groups.append(_parse_plain_count(text, "prefix_group", where) if text else None)
    return _build(p.name, np.asarray(arrival, dtype=np.float64), lambda rel: rel, prompt, output,
                  _group_blocks(groups, prompt) if g_col is not None else None,
                  priority=priority if p_col is not None else None)


PREFIX_UNIT_TOKENS = 512     # RequestTable.prefix_block_tokens, Mooncake's block


def _group_blocks(groups: list[int | None], prompt: list[int] | np.ndarray) -> list[np.ndarray]:
    """Prefix block ids from ``prefix_group``: unit ``i`` of every prompt of group ``g`` is
    block ``g * 2**24 + i`` (whole 512-token units only); no group: no shared block."""
    out = []
    for g, p in zip(groups, prompt):
        n = int(p) // PREFIX_UNIT_TOKENS if g is not None else 0
        out.append(np.arange(n, dtype=np.int64) + (g or 0) * 2**24)
    return out


def _priority(value: object, where: str) -> int:
    """A request priority: an integer within +-PRIORITY_LIMIT (lower is served first)."""
    if isinstance(value, str):
        value = int(value) if re.fullmatch(r"[+-]?[0-9]+", value) else value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > PRIORITY_LIMIT:
        raise WorkloadError(f"{where}: priority={value!r} is not an integer within +-{PRIORITY_LIMIT:,}")
    return value


def _parse_plain_count(text: str, field: str, where: str) -> int:
    s = text.strip()
    if _COUNT_RE.fullmatch(s):
        return _bounded(int(s), field, where, text)
    try:  # accept integral floats such as "512.0" written by dataframe libraries
        value = float(s)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value.is_integer() and value >= 0:
        return _bounded(int(value), field, where, text)
    raise WorkloadError(f"{where}: {field}={text!r} is not a non-negative integer")


def _read_plain_parquet(p: Path) -> RequestTable:
    import pyarrow.parquet as pq
    import pyarrow.types as pa_types

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise WorkloadError(f"{p.name}: cannot be read as Parquet ({' '.join(str(exc).split())})") from None
    header = list(table.column_names)
    _column_indices(p, header, PLAIN_COLUMNS)
    if table.num_rows == 0:
        raise WorkloadError(f"{p.name}: trace has no requests; must contain at least 1 data row")

    def column(name: str, integer: bool) -> np.ndarray:
        col = table.column(name)
        typ = col.type
        import pyarrow.types as pat

        if not (pat.is_integer(typ) or pat.is_floating(typ)):
            raise WorkloadError(f"{p.name}: column {name!r} has type {typ}; must be numeric")
        if col.null_count:
            row = int(np.argmax(np.asarray(col.is_null()))) + 1
            raise WorkloadError(f"{p.name} row {row}: {name} is null; must be a number")
        values = col.to_numpy()
        if integer:
            bad = ~(np.isfinite(values) & (values >= 0) & (values == np.round(values)))
            what = "is not a non-negative integer"
        else:
            values = values.astype(np.float64)
            bad = ~(np.isfinite(values) & (values >= 0))
            what = "is not a finite number of seconds >= 0"
        if bad.any():
            row = int(np.argmax(bad))
            raise WorkloadError(f"{p.name} row {row + 1}: {name}={values[row].item()!r} {what}")
        return values

    arrival = column("arrival_s", integer=False)
    prompt = column("prompt_tokens", integer=True).astype(np.int64)
    output = column("output_tokens", integer=True).astype(np.int64)
    priority = None
    if "priority" in header:
        col = table.column("priority")
        if col.null_count or not (pa_types.is_integer(col.type) or pa_types.is_floating(col.type)):
            raise WorkloadError(f"{p.name}: column 'priority' has type {col.type} with {col.null_count} nulls; "
                                "must be integers")
        priority = [_priority(v, f"{p.name} row {i + 1}") for i, v in enumerate(col.to_pylist())]
    blocks = None
    if "prefix_group" in header:
        groups: list[int | None] = []
        for i, v in enumerate(table.column("prefix_group").to_pylist()):
            ok = v is None or (not isinstance(v, bool) and isinstance(v, (int, float)) and float(v).is_integer()
                               and 0 <= v <= MAX_TOKENS)
            if not ok:
                raise WorkloadError(f"{p.name} row {i + 1}: prefix_group={v!r} is not an integer >= 0 (or null)")
            groups.append(None if v is None else int(v))
        blocks = _group_blocks(groups, prompt)
    return _build(p.name, arrival, lambda rel: rel, prompt, output, blocks, priority=priority)


def read_plain(path: str | Path) -> RequestTable:
    """Read a ``.csv`` or ``.parquet`` file with ``arrival_s, prompt_tokens, output_tokens``.

    Other extensions are read as Parquet if the file starts with the Parquet magic bytes
    and as CSV otherwise.
    """
    p = _existing_file(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _read_plain_csv(p)
    if suffix in (".parquet", ".pq") or _is_parquet(p):
        return _read_plain_parquet(p)
    return _read_plain_csv(p)


# --------------------------------------------------------------------------- dispatch


def _sniff_csv_format(p: Path) -> str:
    with p.open("r", newline="", encoding="utf-8-sig") as handle:
        for row in csv.reader(handle):
            if row and any(cell.strip() for cell in row):
                header = {cell.strip() for cell in row}
                break
        else:
            raise WorkloadError(f"{p.name}: file is empty; expected a header row and at least 1 data row")
    if set(AZURE_COLUMNS) <= header:
        return "azure"
    if set(PLAIN_COLUMNS) <= header:
        return "plain"
    raise WorkloadError(
        f"{p.name}: header {sorted(header)} matches no known trace format; expected "
        f"{list(AZURE_COLUMNS)} (azure) or {list(PLAIN_COLUMNS)} (plain)"
    )


def _is_parquet(p: Path) -> bool:
    with p.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def _sniff_format(p: Path) -> str:
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "mooncake"
    if suffix in (".parquet", ".pq"):
        return "plain"
    if suffix == ".csv":
        return _sniff_csv_format(p)
    with p.open("rb") as handle:
        head = handle.read(4096).decode("utf-8-sig", errors="replace").lstrip()
    if not head:
        raise WorkloadError(f"{p.name}: file is empty; expected a trace")
    if head.startswith("{"):
        return "mooncake"
    if _is_parquet(p):
        return "plain"
    return _sniff_csv_format(p)


_READERS: dict[str, Callable[[str | Path], RequestTable]] = {
    "azure": read_azure_csv,
    "mooncake": read_mooncake_jsonl,
    "plain": read_plain,
}


def read_trace(path: str | Path, format: str = "auto") -> RequestTable:  # noqa: A002 - public name
    """Read a trace file of the given ``format`` (one of ``TRACE_FORMATS``).

    ``"auto"`` picks by extension (``.jsonl``/``.json`` -> mooncake, ``.parquet`` -> plain)
    and, for CSV or unknown extensions, by sniffing the header row.
    """
    if format not in TRACE_FORMATS:
        raise WorkloadError(f"format={format!r} is not a trace format; allowed: {list(TRACE_FORMATS)}")
    p = _existing_file(path)
    try:
        chosen = _sniff_format(p) if format == "auto" else format
        return _READERS[chosen](p)
    except UnicodeDecodeError as exc:
        raise WorkloadError(f"{p}: not a text trace: byte {exc.object[exc.start]:#04x} at offset {exc.start} is not "
                            f"UTF-8 (a CSV, JSON-lines or Parquet trace was expected)") from None
