"""T-SQL statements the model understands, parsed from the batch text into small typed values.

The whole batch is parsed before anything runs, as SQL Server compiles a batch first: a syntax error
anywhere means no statement of the batch runs. SELECTs are cut out of the batch as text and run by
`query.py`. `GO` is a client tool's separator, not T-SQL: sent to a server, it is a syntax error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.mssql_model.errors import Message, SqlError, fail, message
from tests.mssql_model.lexer import END, NUMBER, STRING, VARIABLE, Token, tokenize

STARTERS = frozenset(
    {
        "SELECT",
        "WITH",
        "RESTORE",
        "USE",
        "CREATE",
        "DROP",
        "ALTER",
        "DBCC",
        "EXEC",
        "EXECUTE",
        "SET",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVE",
        "PRINT",
        "KILL",
        "WAITFOR",
        "DECLARE",
        "IF",
        "BACKUP",
        "INSERT",
        "UPDATE",
        "DELETE",
        "GO",
        "WHILE",
        "RAISERROR",
        "THROW",
        "RETURN",
    }
)
_SELECT_STOP = STARTERS - {"WITH", "SET", "SELECT"}


@dataclass
class Statement:
    text: str


@dataclass
class Select(Statement):
    pass


@dataclass(frozen=True)
class Device:
    kind: str  # DISK, URL, TAPE, or LOGICAL for a backup device name
    name: str


@dataclass(frozen=True)
class Option:
    name: str  # upper case
    value: str | int | None = None
    target: str | None = None  # MOVE ... TO target; STOPATMARK ... AFTER time
    has_value: bool = False


@dataclass
class Restore(Statement):
    kind: str  # DATABASE, LOG, HEADERONLY, FILELISTONLY, LABELONLY, VERIFYONLY
    database: str | None
    devices: list[Device] = field(default_factory=list)
    options: list[Option] = field(default_factory=list)

    def opt(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def has(self, *names: str) -> bool:
        return any(o.name in names for o in self.options)


@dataclass
class Use(Statement):
    database: str


@dataclass
class Credential(Statement):
    action: str  # CREATE, ALTER, DROP
    name: str
    identity: str | None = None
    secret: str | None = None


@dataclass
class AlterDatabase(Statement):
    database: str
    setting: str  # SINGLE_USER, MULTI_USER, RESTRICTED_USER, OFFLINE, ONLINE, READ_ONLY, READ_WRITE, RECOVERY
    value: str | None = None
    termination: str | None = None  # ROLLBACK IMMEDIATE, NO_WAIT


@dataclass
class DropDatabase(Statement):
    databases: list[str]
    if_exists: bool = False


@dataclass
class CheckDb(Statement):
    database: str | None
    no_infomsgs: bool


@dataclass
class Exec(Statement):
    procedure: str  # last part of the name, lower case
    args: list[str | int | None]


@dataclass
class SetOption(Statement):
    option: str
    value: str


@dataclass
class Transaction(Statement):
    action: str  # BEGIN, COMMIT, ROLLBACK


@dataclass
class Print(Statement):
    value: str


@dataclass
class Kill(Statement):
    spid: int


@dataclass
class WaitFor(Statement):
    seconds: float


_RESTORE_KINDS = ("DATABASE", "LOG", "HEADERONLY", "FILELISTONLY", "LABELONLY", "VERIFYONLY", "REWINDONLY")


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    # -- token helpers --------------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def peek(self, ahead: int = 1) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.tok
        if tok.kind != END:
            self.pos += 1
        return tok

    def syntax(self, tok: Token | None = None) -> SqlError:
        tok = tok or self.tok
        if tok.kind == END:
            before = self.tokens[max(0, self.pos - 1)]
            return fail(102, self.text[before.start : before.end] if self.pos else "")
        return fail(102, self.text[tok.start : tok.end])

    def word(self, *words: str) -> Token:
        if not self.tok.is_word(*words):
            raise self.syntax()
        return self.advance()

    def accept(self, *words: str) -> bool:
        if self.tok.is_word(*words):
            self.advance()
            return True
        return False

    def punct(self, mark: str) -> None:
        if not self.tok.is_punct(mark):
            raise self.syntax()
        self.advance()

    def name(self) -> str:
        tok = self.tok
        if tok.kind == VARIABLE:
            raise fail(137, tok.value)
        if not tok.is_name:
            raise self.syntax()
        self.advance()
        return tok.value

    def string(self) -> str:
        tok = self.tok
        if tok.kind == VARIABLE:
            raise fail(137, tok.value)
        if tok.kind != STRING:
            raise self.syntax()
        self.advance()
        return tok.value

    def value(self) -> str | int:
        tok = self.tok
        if tok.kind == VARIABLE:
            raise fail(137, tok.value)
        if tok.kind == NUMBER:
            self.advance()
            return int(tok.value) if tok.value.isdigit() else tok.value
        if tok.kind == STRING or tok.is_name:
            self.advance()
            return tok.value
        raise self.syntax()

    def at_statement_end(self) -> bool:
        tok = self.tok
        return tok.kind == END or tok.is_punct(";") or (tok.upper in STARTERS)

    def end_statement(self) -> None:
        if not self.at_statement_end():
            raise self.syntax()
        while self.tok.is_punct(";"):
            self.advance()

    # -- batch --------------------------------------------------------------------------------------------
    def batch(self) -> list[Statement]:
        statements: list[Statement] = []
        while self.tok.is_punct(";"):
            self.advance()
        while self.tok.kind != END:
            statements.append(self.statement(first=not statements))
            self.end_statement()
        return statements

    def statement(self, first: bool) -> Statement:
        start = self.tok
        head = start.upper
        if head in ("SELECT", "WITH"):
            return self.select()
        handler = getattr(self, f"_{head.lower()}", None) if head else None
        if head == "GO":
            raise fail(2812, "GO") if first and self.peek().kind == END else self.syntax()
        if handler is None:
            if head in STARTERS:
                raise SqlError(_unsupported(self.text[start.start : start.end]))
            raise self.syntax()
        stmt: Statement = handler()
        stmt.text = self.text[start.start : self.tokens[self.pos - 1].end]
        return stmt

    def select(self) -> Select:
        start = self.tok.start
        depth = 0
        self.advance()
        prev = self.tokens[self.pos - 1]
        while True:
            tok = self.tok
            if tok.kind == END or (depth == 0 and tok.is_punct(";")):
                break
            if depth == 0 and tok.upper in _SELECT_STOP:
                break
            if (
                depth == 0
                and tok.is_word("SELECT")
                and not (prev.is_word("UNION", "ALL", "EXCEPT", "INTERSECT") or prev.is_punct("("))
            ):
                break
            if tok.is_punct("("):
                depth += 1
            elif tok.is_punct(")"):
                depth -= 1
            prev = self.advance()
        return Select(self.text[start : self.tokens[self.pos - 1].end])

    # -- statements ---------------------------------------------------------------------------------------
    def _restore(self) -> Restore:
        self.advance()
        if not self.tok.is_word(*_RESTORE_KINDS):
            raise self.syntax()
        kind = self.advance().upper
        database = None
        if kind in ("DATABASE", "LOG"):
            database = self.name()
        stmt = Restore("", kind, database)
        if self.accept("FROM"):
            stmt.devices.append(self._device())
            while self.tok.is_punct(","):
                self.advance()
                stmt.devices.append(self._device())
        elif kind != "DATABASE":
            raise self.syntax()
        if self.accept("WITH"):
            stmt.options.append(self._restore_option())
            while self.tok.is_punct(","):
                self.advance()
                stmt.options.append(self._restore_option())
        elif not stmt.devices:
            raise self.syntax()
        return stmt

    def _device(self) -> Device:
        if self.tok.is_word("DISK", "URL", "TAPE") and self.peek().is_punct("="):
            kind = self.advance().upper
            self.advance()
            return Device(kind, self.string())
        return Device("LOGICAL", self.name())

    def _restore_option(self) -> Option:
        if not self.tok.is_name or self.tok.kind != "word":
            raise self.syntax()
        name = self.advance().upper
        if name == "MOVE":
            source = self.string()
            self.word("TO")
            return Option(name, source, self.string(), has_value=True)
        if not self.tok.is_punct("="):
            return Option(name)
        self.advance()
        value = self.value()
        target = None
        if name in ("STOPATMARK", "STOPBEFOREMARK") and self.accept("AFTER"):
            target = self.string()
        return Option(name, value, target, has_value=True)

    def _use(self) -> Use:
        self.advance()
        return Use("", self.name())

    def _create(self) -> Credential:
        self.advance()
        self.word("CREDENTIAL")
        return self._credential_body("CREATE")

    def _credential_body(self, action: str) -> Credential:
        stmt = Credential("", action, self.name())
        if action == "DROP":
            return stmt
        self.word("WITH")
        while True:
            key = self.word("IDENTITY", "SECRET").upper
            self.punct("=")
            if key == "IDENTITY":
                stmt.identity = self.string()
            else:
                stmt.secret = self.string()
            if not self.tok.is_punct(","):
                break
            self.advance()
        if stmt.identity is None:
            raise self.syntax()
        return stmt

    def _drop(self) -> Statement:
        self.advance()
        if self.accept("CREDENTIAL"):
            return self._credential_body("DROP")
        self.word("DATABASE")
        if_exists = False
        if self.tok.is_word("IF") and self.peek().is_word("EXISTS"):
            self.advance()
            self.advance()
            if_exists = True
        names = [self.name()]
        while self.tok.is_punct(","):
            self.advance()
            names.append(self.name())
        return DropDatabase("", names, if_exists)

    def _alter(self) -> Statement:
        self.advance()
        if self.accept("CREDENTIAL"):
            return self._credential_body("ALTER")
        self.word("DATABASE")
        database = self.name()
        self.word("SET")
        setting = self.word(
            "SINGLE_USER",
            "MULTI_USER",
            "RESTRICTED_USER",
            "OFFLINE",
            "ONLINE",
            "READ_ONLY",
            "READ_WRITE",
            "RECOVERY",
        ).upper
        value = None
        if setting == "RECOVERY":
            value = self.word("FULL", "SIMPLE", "BULK_LOGGED").upper
        termination = None
        if self.accept("WITH"):
            if self.accept("ROLLBACK"):
                if self.accept("IMMEDIATE"):
                    termination = "ROLLBACK IMMEDIATE"
                else:
                    self.word("AFTER")
                    self.value()
                    self.accept("SECONDS")
                    termination = "ROLLBACK IMMEDIATE"
            else:
                self.word("NO_WAIT")
                termination = "NO_WAIT"
        return AlterDatabase("", database, setting, value, termination)

    def _dbcc(self) -> CheckDb:
        self.advance()
        self.word("CHECKDB")
        database = None
        if self.tok.is_punct("("):
            self.advance()
            tok = self.tok
            if tok.kind == NUMBER:
                self.advance()
                database = "#" + tok.value
            else:
                database = self.string() if tok.kind == STRING else self.name()
            while self.tok.is_punct(","):
                self.advance()
                self.word("NOINDEX", "REPAIR_ALLOW_DATA_LOSS", "REPAIR_FAST", "REPAIR_REBUILD")
            self.punct(")")
        no_info = False
        if self.accept("WITH"):
            while True:
                option = self.name().upper()
                no_info = no_info or option == "NO_INFOMSGS"
                if not self.tok.is_punct(","):
                    break
                self.advance()
        return CheckDb("", database, no_info)

    def _exec(self) -> Exec:
        self.advance()
        if self.tok.kind == VARIABLE and self.peek().is_punct("="):
            self.advance()
            self.advance()
        parts = [self.name()]
        while self.tok.is_punct(".", ".."):
            self.advance()
            if self.tok.is_punct("."):
                self.advance()
            parts.append(self.name())
        args: list[str | int | None] = []
        if not self.at_statement_end():
            args.append(self._arg())
            while self.tok.is_punct(","):
                self.advance()
                args.append(self._arg())
        return Exec("", parts[-1].lower(), args)

    _execute = _exec

    def _arg(self) -> str | int | None:
        if self.tok.is_word("NULL"):
            self.advance()
            return None
        if self.tok.kind == VARIABLE:
            raise fail(137, self.tok.value)
        return self.value()

    def _set(self) -> SetOption:
        self.advance()
        option = self.name().upper()
        words = []
        while not self.at_statement_end():
            tok = self.advance()
            if tok.kind == VARIABLE:
                raise fail(137, tok.value)
            words.append(tok.value)
        if not words:
            raise self.syntax()
        return SetOption("", option, " ".join(words).upper())

    def _begin(self) -> Transaction:
        self.advance()
        if not self.accept("TRAN", "TRANSACTION", "DISTRIBUTED"):
            raise SqlError(_unsupported("BEGIN"))
        self.accept("TRAN", "TRANSACTION")
        if self.tok.is_name and not self.at_statement_end():
            self.advance()
        return Transaction("", "BEGIN")

    def _commit(self) -> Transaction:
        return self._end_transaction("COMMIT")

    def _rollback(self) -> Transaction:
        return self._end_transaction("ROLLBACK")

    def _end_transaction(self, action: str) -> Transaction:
        self.advance()
        self.accept("TRAN", "TRANSACTION", "WORK")
        if self.tok.is_name and not self.at_statement_end():
            self.advance()
        return Transaction("", action)

    def _print(self) -> Print:
        self.advance()
        tok = self.tok
        if tok.kind == VARIABLE:
            raise fail(137, tok.value)
        if tok.kind not in (STRING, NUMBER):
            raise self.syntax()
        self.advance()
        return Print("", tok.value)

    def _kill(self) -> Kill:
        self.advance()
        tok = self.tok
        if tok.kind != NUMBER or not tok.value.isdigit():
            raise self.syntax()
        self.advance()
        return Kill("", int(tok.value))

    def _waitfor(self) -> WaitFor:
        self.advance()
        self.word("DELAY")
        text = self.string()
        parts = [float(p) for p in text.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0.0)
        return WaitFor("", parts[0] * 3600 + parts[1] * 60 + parts[2])


def _unsupported(word: str) -> Message:
    base = message(102, word)
    text = base.text + " (The SQL Server model of Ferry's tests does not run this statement.)"
    return Message(102, text, base.severity, base.state)


def parse(text: str) -> list[Statement]:
    return Parser(text).batch()
