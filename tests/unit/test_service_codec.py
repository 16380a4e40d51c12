"""The payload codec, the checks of what comes in through Temporal, the TLS settings and the service's log
format: each on its own, without a Temporal server (the integration tests run them against one)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import WorkflowSerializationContext

from ferry.core.errors import UsageError
from ferry.service import workflow_io as wio
from ferry.service.codec import CodecKeyError, EncryptionCodec, create_key, load_key, refusal
from ferry.service.logs import SafeFormatter
from ferry.service.tls import TemporalTls, ensure_gate_files


def _codec(
    tmp_path: Path, workflow: str | None = "mig-aaaaaaaaaa", name: str = "codec.key"
) -> EncryptionCodec:
    codec = EncryptionCodec(create_key(tmp_path / name))
    return codec.with_context(WorkflowSerializationContext("default", workflow)) if workflow else codec


def _json(payload: Payload) -> object:
    import json

    return json.loads(payload.data)


def test_the_key_is_private_and_refused_when_it_is_not(tmp_path: Path) -> None:
    key = create_key(tmp_path / "codec.key")
    assert (tmp_path / "codec.key").stat().st_mode & 0o777 == 0o600
    assert load_key(tmp_path / "codec.key") == key and create_key(tmp_path / "codec.key") == key
    os.chmod(tmp_path / "codec.key", 0o644)
    with pytest.raises(CodecKeyError, match="may be read by other users"):
        load_key(tmp_path / "codec.key")
    with pytest.raises(CodecKeyError, match="no codec key"):
        load_key(tmp_path / "missing.key")
    (tmp_path / "bad.key").write_text("hello")
    os.chmod(tmp_path / "bad.key", 0o600)
    with pytest.raises(CodecKeyError, match="not a Ferry codec key"):
        load_key(tmp_path / "bad.key")


def test_payloads_round_trip_as_ciphertext(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"source": "smb://u:S3cret@h/s"}')
    [sealed] = asyncio.run(codec.encode([plain]))
    assert b"S3cret" not in sealed.SerializeToString() and sealed.metadata["encoding"] == b"binary/encrypted"
    assert asyncio.run(codec.decode([sealed])) == [plain]


def test_what_ferry_did_not_seal_decodes_to_a_refusal(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"requested_at": 0}')
    [sealed] = asyncio.run(codec.encode([plain]))
    other_key = _codec(tmp_path, name="other.key")
    other_workflow = _codec(tmp_path, workflow="mig-bbbbbbbbbb")
    tampered = Payload(metadata=dict(sealed.metadata), data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    cases = {
        "not encrypted by Ferry": (codec, plain),
        "another codec key": (other_key, sealed),
        "not this one": (other_workflow, sealed),
        "forged or damaged": (codec, tampered),
    }
    for words, (decoder, payload) in cases.items():
        [out] = asyncio.run(decoder.decode([payload]))
        reason = refusal(_json(out))
        assert reason is not None and words in reason, (words, reason)


def test_incoming_values_are_checked_field_by_field() -> None:
    ok = wio.parse(
        wio.CutoverSignal, {"requested_at": 1.5, "final_lsn": "0/1", "attempt": 2, "signal": "cutover"}
    )
    assert ok == wio.CutoverSignal(1.5, "0/1", 2, "cutover")
    assert wio.parse(wio.CancelSignal, {"requested_at": 1, "attempt": 1}) == wio.CancelSignal(1, 1)
    refused = {
        "refused": {"ferry_refused": "not encrypted by Ferry"},
        "carries list": [1],
        "lacks the field 'requested_at'": {"attempt": 1},
        "fields Ferry's CutoverSignal does not": {"requested_at": 1, "evil": True},
        "'requested_at' is not": {"requested_at": "now"},
        "'attempt' is not": {"requested_at": 1, "attempt": True},
    }
    for words, raw in refused.items():
        reason = wio.parse(wio.CutoverSignal, raw)
        assert isinstance(reason, str) and words in reason, (words, reason)
    assert isinstance(wio.parse(wio.MigrationInput, {"id": "x"}), str)


def test_tls_settings(tmp_path: Path) -> None:
    assert TemporalTls().config() is None and not TemporalTls().active
    assert TemporalTls(enabled=True).config() is not None
    with pytest.raises(UsageError, match="go together"):
        TemporalTls(cert=tmp_path / "c.pem").config()
    with pytest.raises(UsageError, match="cannot read"):
        TemporalTls(ca=tmp_path / "missing.pem").config()
    files = ensure_gate_files(tmp_path)
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert all((tmp_path / "tls" / n).stat().st_mode & 0o777 == 0o600 for n in ("client.key", "server.key"))
    config = files.client.config()
    assert config is not None and config.client_cert and config.domain == "localhost"
    before = (tmp_path / "tls" / "ca.pem").read_bytes()
    assert (
        ensure_gate_files(tmp_path).client == files.client
        and (tmp_path / "tls" / "ca.pem").read_bytes() == before
    )


def test_the_log_masks_secrets_and_keeps_one_line_per_record() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("ferry.test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("validate failed: %s", "/b/x\nERROR forged line \x1b[2J smb://u:S3cret@h/s")
        try:
            raise OSError("cannot open smb://u:S3cret@h/s?sig=abc")
        except OSError:
            logger.exception("a bug")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "S3cret" not in text and "sig=abc" not in text and "\x1b" not in text
    assert not any(line.startswith("ERROR forged") for line in text.splitlines())
    assert "Traceback" in text  # a bug keeps its traceback
