"""Ferry's backup reader and the restore model's own reader, written apart, agree on every corpus file:
the same HEADERONLY and FILELISTONLY rows field by field, the same media fields, and on a damaged copy,
both refuse it. A disagreement means one of them misreads the format; the model must not simply follow."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any

import pytest

from ferry.core.errors import BackupFormatError
from ferry.engines.sqlserver.headers import BackupSet as FerrySet
from ferry.engines.sqlserver.reader import read_backup_sets
from ferry.stores.local import LocalFileReader
from tests.conftest import corpus_root
from tests.corpus.helpers import corpus_params
from tests.mssql_model.backupfile import read_device
from tests.mssql_model.backupsets import BackupSet as ModelSet
from tests.mssql_model.backupsets import MediaHeader
from tests.mssql_model.formaterrors import BackupFormatError as ModelFormatError
from tests.mssql_model.formaterrors import TruncatedBackup

pytestmark = pytest.mark.corpus


class _File:
    """The model reader's view of a local file: size and bytes by offset."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.size = os.path.getsize(path)

    def read(self, offset: int, length: int) -> bytes:
        with open(self._path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)


def _ferry(path: Path, key: str) -> list[FerrySet]:
    with LocalFileReader(key, path) as reader:
        return read_backup_sets(reader)


def _path(rel: str) -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip("SQL Server backup corpus not found (set FERRY_SQLSERVER_CORPUS)")
    return root / rel


# HEADERONLY columns Ferry does not read (it has no use for them) and the model does: the collation's
# locale and comparison flags. The model's value is the LCID of the collation the record stores at
# SCIN 0xD8 (1033, and 1055 for the Turkish database of the corpus); Ferry's must stay NULL, not a guess.
NOT_READ_BY_FERRY = ("UnicodeLocaleId", "UnicodeComparisonStyle")


def _differences(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> list[str]:
    """Every column of the model's row (SQL Server's columns only) against Ferry's. Ferry's row also has
    a few keys of its own (DatabaseGUID, HasMediaPassword, IsEncrypted), compared through the media."""
    found = []
    for key in sorted(ours):
        if key in NOT_READ_BY_FERRY:
            if theirs.get(key) is not None or not isinstance(ours[key], int):
                found.append(f"{where} {key}: ferry {theirs.get(key)!r}, model {ours[key]!r}")
        elif ours[key] != theirs.get(key):
            found.append(f"{where} {key}: ferry {theirs.get(key)!r}, model {ours[key]!r}")
    return found


def _media(header: MediaHeader, ferry: FerrySet) -> list[str]:
    pairs = {
        "media_family_id": (header.media_family_id, ferry.media_family_id),
        "media_set_id": (header.media_set_id, ferry.media_set_id),
        "family_count": (header.family_count, ferry.family_count),
        "family_sequence_number": (header.family_sequence_number, ferry.family_sequence_number),
        "compressed": (header.compressed, ferry.compressed),
        "has_media_password": (header.password_hash is not None, ferry.has_media_password),
    }
    return [f"media {name}: ferry {b!r}, model {a!r}" for name, (a, b) in pairs.items() if a != b]


def _compare(ours: list[ModelSet], theirs: list[FerrySet], media: MediaHeader) -> list[str]:
    if len(ours) != len(theirs):
        return [f"{len(theirs)} sets in Ferry's reading, {len(ours)} in the model's"]
    found: list[str] = []
    for mine, other in zip(ours, theirs, strict=True):
        where = f"set {other.position}"
        found += _differences(mine.headeronly(), other.headeronly(), where)
        found += _media(media, other)
        if mine.database_guid != other.database_guid:
            found.append(f"{where} DatabaseGUID: ferry {other.database_guid}, model {mine.database_guid}")
        found += [f"{where} type letter: ferry {other.type_letter!r}, model {mine.type_letter!r}"] * (
            mine.type_letter != other.type_letter
        )
        if len(mine.files) != len(other.files):
            found.append(f"{where}: {len(other.files)} files for Ferry, {len(mine.files)} for the model")
            continue
        for f, g in zip(mine.files, other.files, strict=True):
            found += _differences(f.filelistonly(), g.filelistonly(), f"{where} file {g.logical_name}")
            if f.base_time != g.base_time:
                found.append(f"{where} {g.logical_name} base time: ferry {g.base_time}, model {f.base_time}")
    return found


@pytest.mark.parametrize("rel", corpus_params())
def test_both_readers_agree_field_by_field(rel: str) -> None:
    path = _path(rel)
    media, ours = read_device(_File(path))
    assert _compare(ours, _ferry(path, rel), media) == []


# Damaged copies of a few files of each kind: both readers refuse each one, and a cut copy is truncated
# (SQL Server's 3203) for the model.
SAMPLES = [
    "singlerestore/singlerestore.bak",
    "RestoreTimeClean/RestoreTimeClean_2.trn",
    "more/sql2005/Northwind.bak",
    "more/compressed-striped-2016/multiFilesBackup1.bak",
]


def _refusals(tmp_path: Path, data: bytes) -> tuple[str | None, str | None]:
    path = tmp_path / "copy.bak"
    path.write_bytes(data)
    ferry: str | None = None
    model: str | None = None
    try:
        _ferry(path, "copy.bak")
    except BackupFormatError as exc:
        ferry = str(exc)
    try:
        read_device(_File(path))
    except ModelFormatError as exc:
        model = type(exc).__name__
    return ferry, model


@pytest.mark.parametrize("rel", SAMPLES)
def test_both_refuse_the_same_truncated_copies(tmp_path: Path, rel: str) -> None:
    data = _path(rel).read_bytes()
    size = len(data)
    cuts = {1, 8, 51, 52, 600, 1024, 4096, size // 3, size // 2, size - 4096, size - 512, size - 1}
    for cut in sorted(cuts):
        ferry, model = _refusals(tmp_path, data[:cut])
        assert ferry is not None, f"Ferry reads {rel} cut at {cut}"
        assert model == TruncatedBackup.__name__, f"{rel} cut at {cut}: model {model}, ferry {ferry}"


def _filemark_lists(data: bytes) -> list[range]:
    """Where the uncompressed filemarks (SFMB) keep their list of earlier filemarks: the model checks it,
    Ferry does not (it has no use for it), so damage there may be refused by the model alone."""
    if data.startswith(b"MSSQLBAK"):
        return []
    return [range(at + 0x3C, at + 512) for at in range(0, len(data), 512) if data[at : at + 4] == b"SFMB"]


@pytest.mark.parametrize("rel", SAMPLES)
def test_both_refuse_the_same_damaged_copies(tmp_path: Path, rel: str) -> None:
    data = _path(rel).read_bytes()
    model_only = _filemark_lists(data)
    # The head (TAPE, SSET, VOLB, MSCI) and the tail (MSLS, ESET, the closing filemark).
    spots = [*range(0, min(len(data), 0x2000), 97), *range(max(0, len(data) - 0x3000), len(data), 89)]
    for at in spots:
        damaged = bytearray(data)
        damaged[at] ^= 0x20
        ferry, model = _refusals(tmp_path, bytes(damaged))
        if ferry is None and model is not None and any(at in r for r in model_only):
            continue
        assert (ferry is None) == (model is None), f"{rel} byte {at:#x} flipped: ferry {ferry}, model {model}"


def test_both_refuse_foreign_files(tmp_path: Path) -> None:
    for data in (b"x", b"MSSQLBAK" + bytes(600), b"TAPE" + bytes(2000), bytes(4096), b"%PDF-1.4\n" * 100):
        ferry, model = _refusals(tmp_path, data)
        assert ferry is not None and model is not None, f"{data[:12]!r}: ferry {ferry}, model {model}"


@pytest.mark.parametrize("rel", SAMPLES)
def test_random_damage_gives_a_reading_or_a_format_error(rel: str) -> None:
    """The model's server turns its reader's refusals into 3203 / 3241; anything else would be a crash."""
    data = _path(rel).read_bytes()
    rng = random.Random(rel)
    for _ in range(40):
        damaged = bytearray(data)
        for _ in range(rng.choice((1, 2, 8))):
            damaged[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            del damaged[rng.randrange(len(damaged)) :]
        with contextlib.suppress(ModelFormatError):
            read_device(_Bytes(bytes(damaged)))


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]
