"""A decoder for pgoutput, PostgreSQL's built-in logical replication output (protocol 1).

Messages (https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html),
big-endian, strings NUL-terminated:

    B  Begin     final_lsn:int64 commit_time:int64 xid:int32
    C  Commit    flags:int8 commit_lsn:int64 end_lsn:int64 commit_time:int64
    R  Relation  relid:int32 namespace:str name:str replident:int8 ncols:int16
                 (flags:int8 name:str type:int32 typmod:int32) * ncols
    I  Insert    relid:int32 'N' tuple
    U  Update    relid:int32 ['K' tuple | 'O' tuple] 'N' tuple
    D  Delete    relid:int32 ('K' | 'O') tuple
    T  Truncate  nrels:int32 options:int8 relid:int32 * nrels
    O, Y, M      origin, type, logical message: skipped
    tuple        ncols:int16 (kind:byte1 ['t' len:int32 bytes])* -- 'n' null, 'u' unchanged
                 TOASTed value (absent here), 't' text

Column values stay in PostgreSQL's text form (`'42'`, `'t'`, `'2015-01-23 ...'`): the
projection converts what it reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Literal

Row = dict[str, str | None]
Operation = Literal["insert", "update", "delete", "truncate"]


@dataclass(frozen=True, slots=True)
class Change:
    """One row change of a committed transaction, as the projection receives it."""

    table: str
    """The table's name (its schema is `schema`): also the process-status entity."""
    operation: Operation
    new: Row | None
    """The row after an insert or update (unchanged TOASTed columns are absent)."""
    old: Row | None
    """The old key (or whole row, with REPLICA IDENTITY FULL) of an update or delete."""
    lsn: int
    """The end LSN of the transaction's commit: its position."""
    schema: str = "public"


@dataclass(frozen=True, slots=True)
class Relation:
    schema: str
    name: str
    columns: tuple[str, ...]


@dataclass(slots=True)
class Transaction:
    final_lsn: int
    end_lsn: int = 0
    """Set by its Commit: the position to record."""
    changes: list[Change] = field(default_factory=list)


class ProtocolError(ValueError):
    pass


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def unpack(self, fmt: str) -> tuple[int, ...]:
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return values

    def byte(self) -> str:
        value = self.data[self.offset:self.offset + 1].decode()
        self.offset += 1
        return value

    def string(self) -> str:
        end = self.data.index(b"\0", self.offset)
        value = self.data[self.offset:end].decode()
        self.offset = end + 1
        return value


class Decoder:
    """Turns the messages of one replication stream into complete transactions.

    Feed each message's payload to `feed`; it returns a Transaction when a Commit
    completes one (with every change, in order), else None. Relations are remembered
    across transactions, as the protocol requires.
    """

    def __init__(self) -> None:
        self._relations: dict[int, Relation] = {}
        self._open: Transaction | None = None

    @property
    def in_transaction(self) -> bool:
        return self._open is not None

    def feed(self, payload: bytes) -> Transaction | None:
        reader = _Reader(payload)
        kind = reader.byte()
        if kind == "B":
            final_lsn, _, _ = reader.unpack(">qqi")
            self._open = Transaction(final_lsn)
            return None
        if kind == "C":
            _, _, end_lsn, _ = reader.unpack(">bqqq")
            done = self._open
            if done is None:
                raise ProtocolError("Commit without Begin")
            self._open = None
            done.end_lsn = end_lsn
            # Positions are only known now: every change carries its commit's end.
            done.changes = [_at(change, end_lsn) for change in done.changes]
            return done
        if kind == "R":
            relid, = reader.unpack(">i")
            schema, name = reader.string(), reader.string()
            _, ncols = reader.unpack(">bh")
            columns = []
            for _ in range(ncols):
                reader.unpack(">b")
                columns.append(reader.string())
                reader.unpack(">ii")
            self._relations[relid] = Relation(schema, name, tuple(columns))
            return None
        if kind in "IUDT":
            if self._open is None:
                raise ProtocolError(f"{kind} outside a transaction")
            self._open.changes.extend(self._changes(kind, reader))
        # O (origin), Y (type), M (logical message): nothing to project.
        return None

    def _changes(self, kind: str, reader: _Reader) -> list[Change]:
        if kind == "T":
            count, _ = reader.unpack(">ib")
            relations = [self._relation(reader.unpack(">i")[0]) for _ in range(count)]
            return [Change(r.name, "truncate", None, None, 0, r.schema) for r in relations]
        relation = self._relation(reader.unpack(">i")[0])
        old: Row | None = None
        marker = reader.byte()
        if kind == "I":
            return [Change(relation.name, "insert", _tuple(reader, relation), None, 0,
                           relation.schema)]
        if kind == "D":
            return [Change(relation.name, "delete", None, _tuple(reader, relation), 0,
                           relation.schema)]
        if marker in ("K", "O"):
            old = _tuple(reader, relation)
            marker = reader.byte()
        if marker != "N":
            raise ProtocolError(f"Update without a new tuple (found {marker!r})")
        return [Change(relation.name, "update", _tuple(reader, relation), old, 0,
                       relation.schema)]

    def _relation(self, relid: int) -> Relation:
        try:
            return self._relations[relid]
        except KeyError:
            raise ProtocolError(f"change for relation {relid} before its Relation") from None


def _tuple(reader: _Reader, relation: Relation) -> Row:
    ncols, = reader.unpack(">h")
    row: Row = {}
    for index in range(ncols):
        kind = reader.byte()
        name = relation.columns[index]
        if kind == "n":
            row[name] = None
        elif kind == "t":
            length, = reader.unpack(">i")
            row[name] = reader.data[reader.offset:reader.offset + length].decode()
            reader.offset += length
        elif kind != "u":
            raise ProtocolError(f"unknown tuple value kind {kind!r}")
    return row


def _at(change: Change, lsn: int) -> Change:
    return Change(change.table, change.operation, change.new, change.old, lsn, change.schema)
