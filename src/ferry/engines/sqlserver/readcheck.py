"""Before a migration starts: can the target read the database's first backup file, and if not, why? The
same mapping (devices.py) and the same probe (`RESTORE LABELONLY` with the restore's own CREDENTIAL and
MEDIAPASSWORD) as the preflight, without its other checks and without changing the target: a credential
Ferry would create at the start is reported as such, and the files behind it are read then.

`SqlServerMigrator.read_check` (the optional seam method of the same name, engines/base.py) runs it.
"""

from __future__ import annotations

from ferry.core.errors import UsageError
from ferry.core.findings import Finding, MigrationBlocked, Severity
from ferry.core.plan import StepKind
from ferry.engines.base import MigrationJob, SourceFiles
from ferry.engines.sqlserver import access as acc
from ferry.engines.sqlserver import devices as dv
from ferry.engines.sqlserver.prepare import plan_source
from ferry.engines.sqlserver.settings import Settings
from ferry.engines.sqlserver.target import Target


def read_check(job: MigrationJob, files: SourceFiles, target: Target) -> list[Finding]:
    """Findings about how `target` reads the first file of the job's full backup: none when it reads it."""
    try:
        src = plan_source(job, files)
    except MigrationBlocked as exc:
        return list(exc.findings)
    except UsageError as exc:
        return [Finding("no-restorable-chain", Severity.ERROR, exc.message, exc.hint, ())]
    s = Settings.of(job)
    full = next((st for st in src.steps if st.kind is StepKind.FULL), src.steps[0])
    facts = target.facts()
    view = acc.target_view(facts, target.device_facts(facts.major))
    source = acc.open_source(job.source, s, full.backup.size)
    mapped = acc.step_devices(source, list(full.backup.files), view, s.path_map)
    found = dv.findings_of(mapped)
    if any(f.severity is Severity.ERROR for f in found):
        return found
    absent = [c for c in dv.credentials_of(mapped) if not view.has_credential(c.name)]
    if absent and view.sees_credentials:
        names = ", ".join(f"[{c.name}]" for c in absent)
        return [
            *found,
            Finding(
                "credential-at-start",
                Severity.INFO,
                f"Ferry creates the credential {names} on {target.name} when the migration starts; the "
                "backups behind it are read then",
                "nothing to do",
                (mapped[0].device.path,),
            ),
        ]
    why = target.readable(acc.devices(mapped), s.media_password, acc.credential_name(mapped))
    if why is not None:
        cred = next((m.credential for m in mapped if m.credential is not None), None)
        found.append(acc.unreadable_finding(mapped[0].device.path, why, target.name, cred))
    return found
