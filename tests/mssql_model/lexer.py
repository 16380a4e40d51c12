"""T-SQL tokenizer: words, [bracketed] and "quoted" identifiers, N'...' strings, numbers, @variables,
punctuation; `--` and nested `/* */` comments are skipped. Offsets point into the batch text so that a
SELECT can be handed on as the exact text the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.mssql_model.errors import fail

WORD = "word"
QUOTED = "quoted"  # [bracketed] or "double-quoted" identifier
STRING = "string"
NUMBER = "number"
VARIABLE = "variable"
PUNCT = "punct"
END = "end"


@dataclass(frozen=True)
class Token:
    kind: str
    value: str  # identifiers and strings unescaped; words as written
    start: int
    end: int
    national: bool = False

    @property
    def upper(self) -> str:
        return self.value.upper() if self.kind == WORD else ""

    def is_word(self, *words: str) -> bool:
        return self.kind == WORD and self.value.upper() in words

    def is_punct(self, *marks: str) -> bool:
        return self.kind == PUNCT and self.value in marks

    @property
    def is_name(self) -> bool:
        return self.kind in (WORD, QUOTED)


def _closing(text: str, start: int, quote: str) -> tuple[str, int]:
    """Read a quoted run starting after `start` (the opening character); the closing character doubled
    stands for itself (`]]`, `''`, `""`). Returns the unescaped value and the index after the close."""
    out = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            if i + 1 < len(text) and text[i + 1] == quote:
                out.append(quote)
                i += 2
                continue
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise fail(105, text[start + 1 :][:128])


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        elif ch == "[":
            value, end = _closing(text, i, "]")
            tokens.append(Token(QUOTED, value, i, end))
            i = end
        elif ch == '"':
            value, end = _closing(text, i, '"')
            tokens.append(Token(QUOTED, value, i, end))
            i = end
        elif ch == "'":
            value, end = _closing(text, i, "'")
            tokens.append(Token(STRING, value, i, end))
            i = end
        elif ch in "Nn" and i + 1 < n and text[i + 1] == "'":
            value, end = _closing(text, i + 1, "'")
            tokens.append(Token(STRING, value, i, end, national=True))
            i = end
        elif ch == "@":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "_@#$"):
                j += 1
            tokens.append(Token(VARIABLE, text[i:j], i, j))
            i = j
        elif ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            j = i
            while j < n and (text[j].isalnum() or text[j] == "."):
                j += 1
            tokens.append(Token(NUMBER, text[i:j], i, j))
            i = j
        elif ch.isalpha() or ch in "_#":
            j = i
            while j < n and (text[j].isalnum() or text[j] in "_#$@"):
                j += 1
            tokens.append(Token(WORD, text[i:j], i, j))
            i = j
        else:
            two = text[i : i + 2]
            mark = two if two in ("<>", "<=", ">=", "!=", "::", "..") else ch
            tokens.append(Token(PUNCT, mark, i, i + len(mark)))
            i += len(mark)
    tokens.append(Token(END, "", n, n))
    return tokens


def _skip_block_comment(text: str, i: int) -> int:
    depth = 0
    n = len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    raise fail(113)
