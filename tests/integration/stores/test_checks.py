"""Store-level findings against Azurite: blob types a SQL Server 2012/2014 target cannot restore from,
and SAS permissions that a push needs."""

from __future__ import annotations

from ferry.stores.azure_blob import sas_findings
from ferry.stores.base import BlobType, ObjectInfo
from ferry.stores.checks import access_findings, needs_page_blobs, page_blob_findings
from ferry.stores.registry import open_store
from tests.integration.stores.conftest import container_sas, new_container
from tests.integration.stores.servers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite


def test_block_blobs_are_named_for_a_page_blob_target(azurite: Azurite) -> None:
    from azure.storage.blob import BlobServiceClient
    from azure.storage.blob import BlobType as SdkBlobType

    url, container = new_container(azurite)
    svc = BlobServiceClient(
        azurite.endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    )
    c = svc.get_container_client(container)
    c.upload_blob("db/full.bak", b"\0" * 1024, blob_type=SdkBlobType.PAGEBLOB)
    c.upload_blob("db/log 1.trn", b"\0" * 1000)
    c.upload_blob("db/log 2.trn", b"\0" * 1000)
    infos = list(open_store(url).iter_objects())
    assert {o.key: o.blob_type for o in infos} == {
        "db/full.bak": BlobType.PAGE, "db/log 1.trn": BlobType.BLOCK, "db/log 2.trn": BlobType.BLOCK,
    }  # fmt: skip
    assert needs_page_blobs(12) and not needs_page_blobs(13)
    [finding] = page_blob_findings(infos, target="SQL Server 2014")
    assert finding.files == ("db/log 1.trn", "db/log 2.trn") and finding.hint
    assert page_blob_findings([ObjectInfo("x", 1)], target="SQL Server 2014") == []


def test_access_findings_before_anything_starts(azurite: Azurite) -> None:
    url, container = new_container(azurite)
    base = url.split("?")[0]
    assert access_findings(open_store(url), write=True) == []
    [read_only] = access_findings(open_store(f"{base}?{container_sas(container, 'rl')}"), write=True)
    assert read_only.code == "sas-permissions" and "write" in read_only.message
    [expired] = access_findings(open_store(f"{base}?{container_sas(container, 'rl', hours=-1)}"))
    assert expired.code == "sas-expired" and "sig=***" in expired.message


def test_sas_findings_are_pure() -> None:
    assert sas_findings("sp=rl&se=2099-01-01T00:00:00Z&sig=x", "s", write=False) == []
    assert [f.code for f in sas_findings("sp=r&se=2000-01-01T00:00:00Z&sig=x", "s", write=False)] == [
        "sas-expired", "sas-permissions",
    ]  # fmt: skip
