"""Everything Ferry hands to Temporal is encrypted and authenticated: a payload codec (AES-256-GCM).

Temporal stores workflow inputs, signals, activity inputs and results, heartbeats, query answers and
failure messages in its database and shows them to anyone who can reach its frontend. With this codec in
every Ferry client and worker, they hold ciphertext only, and a payload Ferry did not make cannot pass for
one it did:

- each payload is encrypted whole (its metadata too) with a random 96-bit nonce; the additional data binds
  it to the workflow it belongs to (Temporal's serialization context), so a signal copied from one
  migration's history does not decrypt in another's;
- decoding never raises: a payload that is not Ferry's (plain JSON sent with `temporal workflow signal`,
  another key, another workflow, tampered bytes) comes out as `{"ferry_refused": why}`, which the workflow
  refuses and records (workflows.py), instead of failing its task over and over;
- failures go through DefaultFailureConverterWithEncodedAttributes: their message and stack trace are
  payloads too, encrypted like the rest.

The key is 32 random bytes in a file of mode 0600: DATA/codec.key by default, made at the first start of
`ferry serve`. Every process of one deployment needs the same key (`--codec-key FILE` for `ferry agent` and
for `ferry serve` with an external Temporal cluster). The key's id (the first 8 bytes of its SHA-256) is
stored with each payload, so a process with another key says so instead of guessing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)

from ferry.core.errors import UsageError

KEY_FILE = "codec.key"
REFUSED = "ferry_refused"  # the one key of what a refused payload decodes to
_FORMAT = "ferry-codec-v1"
_ENCODING = b"binary/encrypted"
_META_KEY_ID = "ferry-key-id"
_META_WORKFLOW = "ferry-workflow"
_AAD = b"ferry payload v1\x00"


class CodecKeyError(UsageError):
    """The codec key file is missing, unreadable or not a Ferry key."""


@dataclass(frozen=True)
class CodecKey:
    secret: bytes

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(self.secret).digest()[:8]


def create_key(path: Path) -> CodecKey:
    """A new key written to `path` with mode 0600 from the start; the existing one if another process made
    it first (two servers starting together agree on one key)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_key(path)
    with os.fdopen(fd, "w") as f:
        f.write(f"{_FORMAT} {base64.b64encode(secret).decode()}\n")
        f.flush()
        os.fsync(f.fileno())
    return CodecKey(secret)


def load_key(path: Path) -> CodecKey:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise CodecKeyError(
            f"no codec key at '{path}'",
            "every Ferry process of a deployment needs the key `ferry serve` made at its first start "
            "(DATA/codec.key): copy it (mode 0600) and give it with --codec-key FILE",
        ) from None
    except OSError as exc:
        raise CodecKeyError(
            f"cannot read the codec key '{path}': {exc.strerror}", "run Ferry as the user that owns it"
        ) from None
    form, _, encoded = text.partition(" ")
    try:
        secret = base64.b64decode(encoded, validate=True)
    except ValueError:
        secret = b""
    if form != _FORMAT or len(secret) != 32:
        raise CodecKeyError(
            f"'{path}' is not a Ferry codec key", "give the file `ferry serve` made: DATA/codec.key"
        )
    if os.stat(path).st_mode & 0o077:
        raise CodecKeyError(
            f"the codec key '{path}' may be read by other users",
            f"make it private: chmod 600 {path}",
        )
    return CodecKey(secret)


def refused_payload(reason: str) -> Payload:
    data = json.dumps({REFUSED: reason}).encode()
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


def refusal(value: Any) -> str | None:
    """Why a decoded value was refused by the codec, or None when it is one Ferry made."""
    if isinstance(value, dict) and set(value) == {REFUSED}:
        return str(value[REFUSED])
    return None


class EncryptionCodec(PayloadCodec, WithSerializationContext):
    def __init__(self, key: CodecKey, workflow_id: str | None = None) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.key = key
        self.workflow_id = workflow_id
        self._aead = AESGCM(key.secret)

    def with_context(self, context: SerializationContext) -> EncryptionCodec:
        workflow_id = None
        if isinstance(context, WorkflowSerializationContext | ActivitySerializationContext):
            workflow_id = context.workflow_id
        return EncryptionCodec(self.key, workflow_id)

    def _aad(self, workflow_id: str) -> bytes:
        return _AAD + workflow_id.encode()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            nonce = secrets.token_bytes(12)
            bound = self.workflow_id or ""
            sealed = self._aead.encrypt(nonce, p.SerializeToString(), self._aad(bound))
            metadata = {"encoding": _ENCODING, _META_KEY_ID: self.key.key_id.hex().encode()}
            if bound:
                metadata[_META_WORKFLOW] = bound.encode()
            out.append(Payload(metadata=metadata, data=nonce + sealed))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._open(p) for p in payloads]

    def _open(self, p: Payload) -> Payload:
        from cryptography.exceptions import InvalidTag

        if p.metadata.get("encoding") != _ENCODING:
            return refused_payload("not encrypted by Ferry")
        if p.metadata.get(_META_KEY_ID) != self.key.key_id.hex().encode():
            return refused_payload("encrypted with another codec key")
        bound = p.metadata.get(_META_WORKFLOW, b"").decode(errors="replace")
        if self.workflow_id and bound and bound != self.workflow_id:
            return refused_payload(f"made for workflow '{bound}', not this one")
        if len(p.data) < 12 + 16:
            return refused_payload("too short to be Ferry's")
        try:
            plain = self._aead.decrypt(p.data[:12], p.data[12:], self._aad(bound))
        except InvalidTag:
            return refused_payload("does not decrypt with this deployment's key: forged or damaged")
        inner = Payload()
        try:
            inner.ParseFromString(plain)
        except Exception:  # authentic bytes that are not a payload: only a bug in Ferry makes those
            return refused_payload("decrypts, but to no payload")
        return inner


def data_converter(key: CodecKey) -> DataConverter:
    """Temporal's default converter with Ferry's codec, failures' messages encoded too."""
    return DataConverter(
        payload_codec=EncryptionCodec(key),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
