r"""Reading training files the way run_clm.py's `datasets` loaders do: bytes to texts.

1. Read the file as UTF-8. run_clm loads a .txt file with the `datasets` "text"
   loader, which opens it in Python's text mode, so "\r\n" and a lone "\r" both
   become "\n". We do the same (and drop a leading byte-order mark, which is not text).

2. Cut it into texts, one per example. A .txt file gives one text per line, each
   keeping its "\n" (run_clm's default, keep_linebreaks=True; with False every line
   loses its "\n", as the loader's `line.rstrip("\n")` does). A .json/.jsonl or .csv
   file gives one text per record.

JSON and CSV. The extension decides how a file is read, as in run_clm: .txt is
text, .json and .jsonl are JSON, .csv is CSV (anything else is an error). run_clm
loads JSON and CSV with the `datasets` "json" and "csv" loaders, which turn the file
into a table, then tokenizes the column "text" if the table has one, else its first
column, one record at a time. Here Python's own `json` and `csv` modules do the
reading. A JSON file is either JSON lines (one object per line, blank lines skipped)
or one JSON list of objects; a CSV file's first row is the header, and an empty cell
is an empty text. A record's text is tokenized exactly as it is, like one line of a
.txt file: nothing is added or stripped (keep_linebreaks is for .txt files only, as
in run_clm). So records holding a .txt file's lines, "\n" included, give exactly
that file's ids.

What happens to the texts next (tokenized one by one, concatenated, cut into blocks)
is the lesson's part: gpt2/data.py.
"""

import csv
import io
import json
import os
import re
import sys

from gpt2.errors import UserError
from gpt2.files import BOUNDED, MAX_JSON_DEPTH, check_depth, open_regular, read_capped

# Half of a UTF-16 pair on its own: JSON's "\ud800" decodes to it, and it is no character.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# How a file is read, by its extension, as run_clm picks the `datasets` loader.
FORMATS = {".txt": "txt", ".json": "json", ".jsonl": "json", ".csv": "csv"}


# --- reading --------------------------------------------------------------------

def max_text_bytes() -> int:
    """The largest training file read: $GPT2_MAX_TEXT_MB megabytes (default 1024).

    A file is read whole, decoded and split in memory (about 4 times its size at the
    peak), so a cap that a user raises knowingly beats a run that ends in the kernel's
    out-of-memory killer, or a link to /dev/zero that is read for ever.
    """
    value = os.environ.get("GPT2_MAX_TEXT_MB", "1024")
    try:
        mb = float(value)
    except ValueError:
        mb = -1
    if not 0 < mb < 2**40:
        raise UserError(f"GPT2_MAX_TEXT_MB={value}: not a positive number of megabytes")
    return int(mb * 2**20)


def _read_bytes(path) -> bytes:
    """The bytes of a regular file of at most max_text_bytes(): not a device, FIFO or directory."""
    cap = max_text_bytes()
    hint = " (GPT2_MAX_TEXT_MB raises the cap)"
    try:
        with open_regular(path, "text file", cap, hint) as f:
            data = read_capped(f, path, cap, "text file", hint)  # it may grow while being read
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise UserError(f"{path}: the file is empty")
    return data


def _decode(path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Point at the first bad byte the way an editor would: line and column
        # (in characters, counted from 1) plus the byte offset for hex viewers.
        line = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        # Everything before the first error is valid UTF-8, so this decode succeeds.
        column = len(data[line_start:e.start].decode("utf-8")) + 1
        bad = data[e.start:e.end]
        what = ("byte " if len(bad) == 1 else "bytes ") + " ".join(f"0x{b:02x}" for b in bad)
        raise UserError(
            f"{path}: not UTF-8 text: {what} at line {line}, column {column} "
            f"(byte offset {e.start}); save the file as UTF-8"
        ) from None
    # A UTF-8 byte-order mark (written by some Windows editors) is not part of the text.
    text = text.removeprefix("\ufeff")
    if not text:
        raise UserError(f"{path}: the file is empty")
    return text


def read_text(path) -> str:
    """The file's text, or a one-line UserError: missing, a directory, empty, not UTF-8."""
    return _decode(path, _read_bytes(path))


# --- texts: the lines of a .txt file, the records of a .json or .csv file --------

def split_lines(text: str) -> list[str]:
    r"""Split like the `datasets` text loader: on "\n" only, each line keeping its "\n".

    "\r\n" and "\r" count as "\n" (text-mode reading). An empty line is "\n"; a last
    line without "\n" is kept as it is; a text ending in "\n" adds no empty line.
    `str.splitlines` would be wrong here: it also splits on "\v", "\f", "\x1c"-"\x1e",
    "\x85" and the Unicode line and paragraph separators, which the loader keeps.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    last = lines.pop()  # "" when the text ends with "\n"
    out = [line + "\n" for line in lines]
    if last:
        out.append(last)
    return out


def file_format(path) -> str:
    """How the file is read, "txt", "json" or "csv", by its extension; any other is a UserError."""
    extension = os.path.splitext(str(path))[1].lower()
    if extension not in FORMATS:
        what = f"a {extension} file" if extension else "a file without an extension"
        raise UserError(f"{path}: cannot read {what}; the files read are "
                        f".txt, .json, .jsonl and .csv")
    return FORMATS[extension]


def check_file(path) -> None:
    """The cheap part of reading, said before any model is downloaded or loaded: the file is
    there, not empty, and of a format read here (read_texts does the rest)."""
    file_format(path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if size == 0 and os.path.isfile(path):
        raise UserError(f"{path}: the file is empty")


def read_texts(path, *, keep_linebreaks=True) -> list[str]:
    """The texts of the file, one per example (a line or a record), as run_clm's loaders give them.

    Checks the whole file: any problem with it is a one-line UserError.
    """
    fmt = file_format(path)  # before reading: an unknown type is refused at once
    return _texts(path, read_text(path), fmt, keep_linebreaks)


def _texts(source, text: str, fmt: str, keep_linebreaks: bool) -> list[str]:
    """The texts of `text`, the decoded contents of `source` in format `fmt`."""
    if fmt == "json":
        return _json_texts(source, text)
    if fmt == "csv":
        return _csv_texts(source, text)
    lines = split_lines(text)
    if not keep_linebreaks:
        lines = [line.removesuffix("\n") for line in lines]  # an empty line becomes ""
    return lines


# --- JSON and CSV records ---------------------------------------------------------

def _json_records(source, text: str):
    """(the values in a JSON file, the line of each or None): one JSON list, or JSON lines.

    Numbers and nesting are bounded as in every JSON file read here (gpt2/files.py).
    """
    if text.lstrip().startswith("["):
        try:
            return check_depth(json.loads(text, **BOUNDED), source), None
        except RecursionError:
            check_depth(_deep(), source)
        except json.JSONDecodeError as e:
            if not e.msg.startswith("Extra data"):  # else: JSON lines whose first line is an array
                raise UserError(f"{source}: invalid JSON at line {e.lineno}, "
                                f"column {e.colno}: {e.msg}") from None
        except ValueError as e:  # a number too long
            raise UserError(f"{source}: invalid JSON: {e}") from None
    records, lines = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(check_depth(json.loads(line, **BOUNDED), f"{source}: line {number}"))
        except RecursionError:
            check_depth(_deep(), f"{source}: line {number}")
        except json.JSONDecodeError as e:
            raise UserError(f"{source}: invalid JSON at line {number}, column {e.colno}: "
                            f"{e.msg} (expected one object per line, or one list "
                            f"of objects)") from None
        except ValueError as e:  # a number too long
            raise UserError(f"{source}: invalid JSON at line {number}: {e}") from None
        lines.append(number)
    return records, lines


def _deep():
    """A value nested past the limit: check_depth's message for a RecursionError of the parser."""
    value = []
    for _ in range(MAX_JSON_DEPTH):
        value = [value]
    return value


def _json_kind(value) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: True is an int in Python
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def _json_texts(source, text: str) -> list[str]:
    """The text of each record: its "text" if any record has one, else its first field."""
    records, lines = _json_records(source, text)

    def record(i):  # how an error names the record: from 1, with its line when known
        return f"record {i + 1}" + (f" (line {lines[i]})" if lines else "")

    if not records:
        raise UserError(f"{source}: no records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise UserError(f"{source}: {record(i)} is {_json_kind(r)}, not an object")
    # run_clm's column: "text" if the table has it, else the table's first column
    # (the `datasets` loader orders the columns as the keys first appear).
    if any("text" in r for r in records):
        column = "text"
    else:
        column = next((key for r in records for key in r), None)
        if column is None:
            raise UserError(f"{source}: the records have no fields")
        _warn_first_field(source, f'field "{column}"', "no record has a \"text\" field")
    texts = []
    for i, r in enumerate(records):
        if column not in r:
            raise UserError(f'{source}: {record(i)} has no "{column}"')
        if not isinstance(r[column], str):
            raise UserError(f'{source}: {record(i)}: "{column}" is '
                            f"{_json_kind(r[column])}, not a string")
        lone = LONE_SURROGATE.search(r[column])
        if lone:  # "\ud800" alone is valid JSON, but no character: no tokenizer can read it
            raise UserError(f'{source}: {record(i)}: "{column}" holds a lone surrogate (\\u{ord(lone[0]):04x} at '
                            f"character {lone.start() + 1}), which is no character; a character beyond U+FFFF "
                            f"is written as a pair, such as \\ud83d\\ude00")
        texts.append(r[column])
    return texts


def _warn_first_field(source, field, why):
    """run_clm's silent fallback, said once per file read: a wrong guess here trains on ids or labels."""
    print(f"warning: {source}: {why}: training on the {field}, the first one (name a field \"text\" "
          f"to choose)", file=sys.stderr)


def _csv_rows(source, text: str):
    """[(line where the row starts, its cells)] of a CSV text, blank lines skipped."""
    # newline="": a line break inside a quoted cell stays as it is (see the csv docs).
    # strict: an unclosed quote is an error, not a cell that swallows the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    # A document can be longer than csv's default limit of 131,072 characters per cell.
    old_limit = csv.field_size_limit(2**31 - 1)
    rows = []
    try:
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise UserError(f"{source}: invalid CSV in the row starting at line "
                                f"{start}: {e}") from None
            if row:
                rows.append((start, row))
    finally:
        csv.field_size_limit(old_limit)
    return rows


def _csv_texts(source, text: str) -> list[str]:
    """The text of each row: its "text" cell if the header has one, else its first cell."""
    rows = _csv_rows(source, text)
    if len(rows) < 2:
        raise UserError(f"{source}: no rows below the header (the first row)")
    header = rows[0][1]
    column = header.index("text") if "text" in header else 0
    if "text" not in header:
        _warn_first_field(source, f'column "{header[0]}"', 'the header has no "text" column')
    texts = []
    for i, (line, row) in enumerate(rows[1:]):
        record = f"record {i + 1} (line {line})"
        if len(row) > len(header):
            # pandas, under run_clm's CSV loader, refuses it too; mostly an unquoted comma.
            raise UserError(f"{source}: {record} has {len(row)} cells, the header "
                            f"{len(header)}; quote a text that holds a comma")
        if column >= len(row):
            raise UserError(f'{source}: {record} has no "{header[column]}" cell')
        texts.append(row[column])
    return texts
