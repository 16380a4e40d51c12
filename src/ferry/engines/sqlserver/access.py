"""What a SQL Server target needs from the store to read its files, gathered once per step: the store's
endpoint, the secrets its credentials take (a SAS, minted from the account key when Ferry has only that;
the account key for page blobs; S3 keys), the blob types of the files, and the target's own facts that the
device mapping (devices.py) reads. Also the credentials' life on the target: created or altered before the
first read, renewed during long online migrations.

A SAS Ferry mints is read and list on the container only, valid for max(24 h, 4 x the restore's expected
time at 50 MB/s): long enough for the full restore and a day of log backups; during online migrations the
log loop renews it (ALTER CREDENTIAL) each time less than a quarter of that remains, and each step renews
it when it starts, so a migration that is stopped and resumed never runs on an expired one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from ferry.core.errors import FerryError
from ferry.core.findings import Finding
from ferry.engines.sqlserver.devices import (
    Credential,
    Mapped,
    PathMap,
    Platform,
    Secret,
    SourceAccess,
    TargetView,
    map_file,
)
from ferry.engines.sqlserver.facts import DeviceFacts, TargetFacts
from ferry.engines.sqlserver.settings import Settings
from ferry.engines.sqlserver.tsql import Device
from ferry.stores.azure_blob import AzureBlobStore
from ferry.stores.base import BackupStore
from ferry.stores.location import parse_location
from ferry.stores.registry import open_location
from ferry.stores.s3 import S3Store

MIN_SAS_HOURS = 24.0
ASSUMED_RATE = 50 * 1024 * 1024  # bytes per second a restore reads, for the SAS's lifetime only
SAS_HEADROOM = 4.0


def sas_hours(restore_bytes: int) -> float:
    """How long a minted SAS is valid: max(24 h, 4 x the expected restore time)."""
    return max(MIN_SAS_HOURS, SAS_HEADROOM * restore_bytes / ASSUMED_RATE / 3600.0)


@dataclass
class Source:
    """The source store, opened, and what the target reads it with."""

    access: SourceAccess
    store: BackupStore
    hours: float
    types: dict[str, str | None] = field(default_factory=dict)

    def blob_type(self, key: str) -> str | None:
        """Azure's blob type of `key` (one HEAD request, remembered); None for other stores."""
        if not isinstance(self.store, AzureBlobStore):
            return None
        if key not in self.types:
            try:
                kind = self.store.stat(key).blob_type
            except FerryError:
                kind = None
            self.types[key] = f"{kind.value}blob" if kind is not None else None
        return self.types[key]


def open_source(location: str, s: Settings, restore_bytes: int = 0, *, secrets: bool = True) -> Source:
    """The store of `location` and its SourceAccess. FERRY_MSSQL_SAS (or the sas_token option) is the SAS of
    a mapped URL, and of an Azure source when it has none of its own. `secrets` False: the endpoint only
    (a script names its secrets as sqlcmd variables and holds none)."""
    loc = parse_location(location)
    store, prefix = open_location(loc)
    if prefix:  # the location names one file: keys are relative to its folder
        loc = loc.parent()
    hours = sas_hours(restore_bytes)
    if not secrets:
        endpoint = store.endpoint if isinstance(store, AzureBlobStore | S3Store) else ""
        return Source(SourceAccess(loc, endpoint=endpoint, key_credential=s.credential), store, hours)
    access = SourceAccess(loc, sas=(s.sas or "").lstrip("?"), key_credential=s.credential)
    if isinstance(store, AzureBlobStore):
        token, minted, expiry = store.container_sas(hours)
        access = replace(
            access,
            endpoint=store.endpoint,
            sas=token or access.sas,
            sas_minted=minted,
            sas_expiry=expiry,
            account_key=store.account_key,
        )
    elif isinstance(store, S3Store):
        access = replace(access, endpoint=store.endpoint, s3_keys=store.access_keys())
    return Source(access, store, hours)


def target_view(facts: TargetFacts, dev: DeviceFacts) -> TargetView:
    platform = Platform(dev.platform) if dev.platform in ("Windows", "Linux") else None
    sysadmin = facts.is_sysadmin
    return TargetView(
        facts.major,
        platform,
        facts.credentials,
        dev.can_alter_credentials or sysadmin,
        dev.can_view_credentials or sysadmin,
    )


def view_of_state(major: int, platform: str | None) -> TargetView:
    """A view for rendering a later step's devices (findings were settled at prepare)."""
    plat = Platform(platform) if platform in ("Windows", "Linux") else None
    return TargetView(major, plat, (), True)


def step_devices(
    src: Source,
    keys: Sequence[str],
    view: TargetView,
    path_map: Sequence[PathMap],
    type_of: str | None = None,
) -> list[Mapped]:
    """Every stripe of one backup, mapped. `type_of`: a key whose blob type stands for the others (so that
    planning a long chain of logs asks the store only once)."""
    out = []
    for key in keys:
        blob_type = src.blob_type(type_of or key)
        out.append(map_file(src.access, key, view, path_map, blob_type))
    return out


def credential_name(mapped: Sequence[Mapped]) -> str | None:
    return next((m.with_credential for m in mapped if m.with_credential), None)


def devices(mapped: Iterable[Mapped]) -> list[Device]:
    return [m.device for m in mapped]


def parse_maps(values: Iterable[str]) -> tuple[PathMap, ...]:
    return tuple(PathMap.parse(v) for v in values)


class Credentials:
    """The credentials a migration's devices need, put on the target: created when missing, altered when
    Ferry holds a newer secret (a minted SAS being renewed, or a probe that failed with the old one)."""

    RENEW_FRACTION = 0.25

    def __init__(self, src: Source, needed: Sequence[Credential]) -> None:
        self.src = src
        self.needed = list(needed)
        self.renewed_at = time.time()

    def ensure(self, target: object, existing: Sequence[str], *, alter: bool = False) -> list[str]:
        """Create the missing ones (and alter the others when `alter`) for which Ferry has a secret.
        Returns the names it wrote."""
        from ferry.engines.sqlserver.target import Target

        assert isinstance(target, Target)
        have = {c.casefold() for c in existing}
        written = []
        for cred in self.needed:
            secret = self.src.access.secret(cred.secret)
            if not secret:
                continue
            exists = cred.name.casefold() in have
            if exists and not alter:
                continue
            target.put_credential(cred, secret, alter=exists)
            written.append(cred.name)
        return written

    def renew_due(self, now: float | None = None) -> bool:
        """A minted SAS with less than a quarter of its life left."""
        a = self.src.access
        if not a.sas_minted or a.sas_expiry is None:
            return False
        now = time.time() if now is None else now
        return a.sas_expiry - now < self.src.hours * 3600.0 * self.RENEW_FRACTION

    def renew(self, target: object, existing: Sequence[str]) -> bool:
        """Mint a new SAS and ALTER the SAS credentials with it. False when there is nothing to renew."""
        store = self.src.store
        if not isinstance(store, AzureBlobStore) or not self.src.access.sas_minted:
            return False
        token, minted, expiry = store.container_sas(self.src.hours)
        self.src.access = replace(self.src.access, sas=token, sas_minted=minted, sas_expiry=expiry)
        sas_only = [c for c in self.needed if c.secret is Secret.SAS]
        Credentials(self.src, sas_only).ensure(target, existing, alter=True)
        self.renewed_at = time.time()
        return True


def unreadable_finding(device: str, reason: str, target: str, cred: Credential | None) -> Finding:
    """A device the target could not read (RESTORE LABELONLY), with its own words and what to check."""
    from ferry.core.findings import Severity

    if cred is not None and cred.secret is Secret.SAS:
        hint = (
            f"the credential [{cred.name}] must hold a valid SAS with read and list on the container "
            "(not expired, without the leading ?): ALTER CREDENTIAL it, or run Ferry as a login with ALTER "
            "ANY CREDENTIAL and a SAS or account key, and Ferry replaces it; running again will not help "
            "until then"
        )
    elif cred is not None:
        hint = (
            f"the credential [{cred.name}] must hold the right {cred.identity!r} secret; running again "
            "will not help until it does"
        )
    elif device.startswith("\\\\"):
        hint = (
            "the SQL Server service account must be allowed to read that share (grant it read on the share "
            "and the folder), or map the files with --backup-path-as LOCAL=TARGET"
        )
    else:
        hint = (
            "the SQL Server service account must reach that path (a share it may read, or a local copy); "
            "map store paths to what the target sees with --backup-path-as LOCAL=TARGET"
        )
    return Finding(
        "backup-unreadable",
        Severity.ERROR,
        f"{target} cannot read backup file '{device}': {reason}",
        hint,
        (device,),
    )
