"""SQL Server messages the model sends: number, severity and Microsoft's text template.

Texts are the templates of Microsoft's "Database engine events and errors" tables (`%ls`, `%d`...
placeholders), filled in the order SQL Server fills them. A failing statement raises `SqlError` with the
messages to send, in order: usually the specific error, then 3013 "... is terminating abnormally.".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# number: (severity, template)
MESSAGES: dict[int, tuple[int, str]] = {
    0: (0, "%ls"),  # PRINT
    102: (15, "Incorrect syntax near '%.*ls'."),
    113: (15, "Missing end comment mark '*/'."),
    105: (15, "Unclosed quotation mark after the character string '%.*ls'."),
    137: (15, 'Must declare the scalar variable "%.*ls".'),
    174: (15, "The %.*ls function requires %d argument(s)."),
    195: (15, "'%.*ls' is not a recognized built-in function name."),
    209: (16, "Ambiguous column name '%.*ls'."),
    207: (16, "Invalid column name '%.*ls'."),
    208: (16, "Invalid object name '%.*ls'."),
    241: (16, "Conversion failed when converting date and/or time from character string."),
    262: (14, "CREATE DATABASE permission denied in database 'master'."),
    911: (16, "Database '%.*ls' does not exist. Make sure that the name is entered correctly."),
    924: (14, "Database '%.*ls' is already open and can only have one user at a time."),
    927: (14, "Database '%.*ls' cannot be opened. It is in the middle of a restore."),
    942: (14, "Database '%.*ls' cannot be opened because it is offline."),
    1834: (16, "The file '%ls' cannot be overwritten. It is being used by database '%.*ls'."),
    2520: (
        16,
        "Could not find database '%.*ls'. The database either does not exist, or was dropped before a "
        "statement tried to use it. Verify if the database exists by querying the sys.databases catalog "
        "view.",
    ),
    2528: (
        10,
        "DBCC execution completed. If DBCC printed error messages, contact your system administrator.",
    ),
    2536: (10, "DBCC results for '%.*ls'."),
    2812: (16, "Could not find stored procedure '%.*ls'."),
    3013: (16, "%hs is terminating abnormally."),
    3014: (10, "%hs successfully processed %I64d pages in %d.%03d seconds (%d.%03d MB/sec)."),
    3021: (16, "Cannot perform a backup or restore operation within a transaction."),
    3031: (
        16,
        "Option '%ls' conflicts with option(s) '%ls'. Remove the conflicting option and reissue the "
        "statement.",
    ),
    3032: (
        16,
        "One or more of the options (%ls) are not supported for this statement. Review the documentation "
        "for supported options.",
    ),
    3101: (16, "Exclusive access could not be obtained because the database is in use."),
    3102: (
        16,
        "%ls cannot process database '%ls' because it is in use by this session. It is recommended that "
        "the master database be used when performing this operation.",
    ),
    3110: (14, "User does not have permission to RESTORE database '%.*ls'."),
    3117: (
        16,
        "The log or differential backup cannot be restored because no files are ready to rollforward.",
    ),
    3118: (
        16,
        'The database "%ls" does not exist. RESTORE can only create a database when restoring either a '
        "full backup or a file backup of the primary file.",
    ),
    3119: (
        16,
        "Problems were identified while planning for the RESTORE statement. Previous messages provide "
        "details.",
    ),
    3132: (16, "The media set has %d media families but only %d are provided. All members must be provided."),
    3135: (
        16,
        "The backup set in file '%ls' was created by %hs and cannot be used for this restore operation.",
    ),
    3136: (
        16,
        "This differential backup cannot be restored because the database has not been restored to the "
        "correct earlier state.",
    ),
    3142: (
        16,
        'File "%ls" cannot be restored over the existing "%ls". Reissue the RESTORE statement using WITH '
        "REPLACE to overwrite pre-existing files, or WITH MOVE to identify an alternate location.",
    ),
    3145: (16, "The STOPAT option is not supported for databases that use the SIMPLE recovery model."),
    3153: (16, "The database is already fully recovered."),
    3154: (16, "The backup set holds a backup of a database other than the existing '%ls' database."),
    3156: (
        16,
        "File '%ls' cannot be restored to '%ls'. Use WITH MOVE to identify a valid location for the file.",
    ),
    3159: (
        16,
        'The tail of the log for the database "%ls" has not been backed up. Use BACKUP LOG WITH '
        "NORECOVERY to backup the log if it contains work you do not want to lose. Use the WITH REPLACE or "
        "WITH STOPAT clause of the RESTORE statement to just overwrite the contents of the log.",
    ),
    3169: (
        16,
        "The database was backed up on a server running version %ls. That version is incompatible with "
        "this server, which is running version %ls. Either restore the database on a server that supports "
        "the backup, or use a backup that is compatible with this server.",
    ),
    3176: (
        16,
        "File '%ls' is claimed by '%ls'(%d) and '%ls'(%d). The WITH MOVE clause can be used to relocate "
        "one or more files.",
    ),
    3180: (
        16,
        "This backup cannot be restored using WITH STANDBY because a database upgrade is needed. Reissue "
        "the RESTORE without WITH STANDBY.",
    ),
    3187: (
        16,
        "RESTORE WITH CHECKSUM cannot be specified because the backup set does not contain checksum "
        "information.",
    ),
    3201: (16, "Cannot open backup device '%ls'. Operating system error %ls."),
    3203: (16, 'Read on "%ls" failed: %ls'),
    3206: (
        16,
        "Backup device '%.*ls' does not exist. To view existing backup devices, use the sys.backup_devices "
        "catalog view. To create a new backup device use either sp_addumpdevice or SQL Server Management "
        "Studio.",
    ),
    3205: (16, "Too many backup devices specified for backup or restore; only %d are allowed."),
    3211: (10, "%d percent processed."),
    3217: (16, "Invalid value specified for %ls parameter."),
    # Not in Microsoft's 3000-3999 table; the number and text SQL Server sends, as DBAs report them.
    3225: (
        16,
        "Use of WITH CREDENTIAL syntax is not valid for credentials containing a Shared Access Signature.",
    ),
    3227: (
        16,
        'The backup media on "%ls" is part of media family %d which has already been processed on "%ls". '
        "Ensure that backup devices are correctly specified. For tape devices, ensure that the correct "
        "volumes are loaded.",
    ),
    3234: (
        16,
        "Logical file '%.*ls' is not part of database '%ls'. Use RESTORE FILELISTONLY to list the logical "
        "file names.",
    ),
    3241: (
        16,
        "The media family on device '%ls' is incorrectly formed. SQL Server cannot process this media "
        "family.",
    ),
    3246: (16, "Cannot find file ID %d on device '%ls'."),
    3250: (16, "The value '%d' is not within range for the %ls parameter."),
    3253: (16, "The block size parameter must supply a value that is a power of 2."),
    3254: (16, "The volume on device '%ls' is empty."),
    3257: (
        16,
        "There is insufficient free space on disk volume '%ls' to create the database. The database "
        "requires %I64u additional free bytes, while only %I64u bytes are available.",
    ),
    3258: (
        16,
        'The volume on the device "%ls" is not part of the media set that is currently being processed. '
        "Ensure that the backup devices are loaded with the correct media.",
    ),
    3262: (10, "The backup set on file %d is valid."),
    3279: (16, "Access is denied due to a password failure"),
    3441: (
        21,
        "During startup of warm standby database '%.*ls' (database ID %d), its standby file ('%ls') was "
        "inaccessible to the RESTORE statement. The operating system error was '%ls'. Diagnose the "
        "operating system error, correct the problem, and retry startup.",
    ),
    3701: (14, "Cannot drop the database '%.*ls', because it does not exist or you do not have permission."),
    3702: (16, 'Cannot drop database "%.*ls" because it is currently in use.'),
    3902: (16, "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION."),
    3903: (16, "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION."),
    4035: (10, "Processed %I64d pages for database '%ls', file '%ls' on file %d."),
    4060: (11, 'Cannot open database "%.*ls" requested by the login. The login failed.'),
    4305: (
        16,
        "The log in this backup set begins at LSN %.*ls, which is too recent to apply to the database. An "
        "earlier log backup that includes LSN %.*ls can be restored.",
    ),
    4319: (
        16,
        "A previous restore operation was interrupted and did not complete processing on file '%ls'. "
        "Either restore the backup set that was interrupted or restart the restore sequence.",
    ),
    4322: (
        10,
        "This backup set contains records that were logged before the designated point in time. The "
        "database is being left in the restoring state so that more roll forward can be performed.",
    ),
    4326: (
        16,
        "The log in this backup set terminates at LSN %.*ls, which is too early to apply to the database. "
        "A more recent log backup that includes LSN %.*ls can be restored.",
    ),
    4329: (
        10,
        "This log file contains records logged before the designated mark. The database is being left in "
        "the Restoring state so you can apply another log file.",
    ),
    4330: (
        16,
        "This backup set cannot be applied because it is on a recovery path that is inconsistent with the "
        "database. The recovery path is the sequence of data and log backups that have brought the database "
        "to a particular recovery point. Find a compatible backup to restore, or restore the rest of the "
        "database to match a recovery point within this backup set, which will restore the database to a "
        "different point in time. For more information about recovery paths, see SQL Server Books Online.",
    ),
    4334: (16, "The named mark does not identify a valid LSN."),
    4335: (
        16,
        "The specified STOPAT time is too early. All or part of the database is already rolled forward "
        "beyond that point.",
    ),
    4338: (
        16,
        "The STOPAT clause specifies a point too early to allow this backup set to be restored. Choose a "
        "different stop point or use RESTORE DATABASE WITH RECOVERY to recover at the current point.",
    ),
    4340: (
        16,
        "The point-in-time clause of this RESTORE statement is restricted for use by RESTORE LOG "
        "statements only. Omit the clause or use a clause that includes a timestamp.",
    ),
    4353: (
        16,
        "Conflicting file relocations have been specified for file '%.*ls'. Only a single WITH MOVE clause "
        "should be specified for any logical file name.",
    ),
    5011: (
        14,
        "User does not have permission to alter database '%.*ls', the database does not exist, or the "
        "database is not in a state that allows access checks.",
    ),
    5052: (16, "ALTER DATABASE is not permitted while a database is in the %.*ls state."),
    5061: (
        16,
        "ALTER DATABASE failed because a lock could not be placed on database '%.*ls'. Try again later.",
    ),
    5133: (16, 'Directory lookup for the file "%ls" failed with the operating system error %ls.'),
    5170: (
        16,
        "Cannot create file '%ls' because it already exists. Change the file path or the file name, and "
        "retry the operation.",
    ),
    5701: (10, "Changed database context to '%.*ls'."),
    5703: (10, "Changed language setting to %.*ls."),
    6104: (16, "Cannot use KILL to kill your own process."),
    6106: (16, "Process ID %d is not an active process ID."),
    6102: (14, "User does not have permission to use the KILL statement."),
    8989: (10, "CHECKDB found %d allocation errors and %d consistency errors in database '%ls'."),
    15025: (16, "The server principal '%s' already exists."),
    15151: (16, "Cannot find the %S_MSG '%.*ls', because it does not exist or you do not have permission."),
    15247: (16, "User does not have permission to perform this action."),
    18456: (14, "Login failed for user '%.*ls'."),
}

_PLACEHOLDER = re.compile(r"%(?:\.\*)?(?:ls|hs|s|d|I64d|I64u|03d|S_MSG)")


def render(number: int, *args: object) -> str:
    """Microsoft's template for `number` with `args` in place of its placeholders, in order."""
    template = MESSAGES[number][1]
    values = iter(args)

    def fill(match: re.Match[str]) -> str:
        value = next(values, "")
        if match.group(0) == "%03d":
            return f"{int(str(value)):03d}"
        return str(value)

    return _PLACEHOLDER.sub(fill, template)


@dataclass(frozen=True)
class Message:
    """One INFO or ERROR token's content."""

    number: int
    text: str
    severity: int
    state: int = 1

    @property
    def is_error(self) -> bool:
        return self.severity > 10


def message(number: int, *args: object, state: int = 1) -> Message:
    return Message(number, render(number, *args), MESSAGES[number][0], state)


class SqlError(Exception):
    """A statement failed: `messages` are sent in order, then the statement's DONE carries the error bit."""

    def __init__(self, *messages: Message) -> None:
        super().__init__(messages[0].text if messages else "")
        self.messages = list(messages)

    @property
    def number(self) -> int:
        return self.messages[0].number


def fail(number: int, *args: object, state: int = 1) -> SqlError:
    return SqlError(message(number, *args, state=state))


def terminating(statement: str, *messages: Message) -> SqlError:
    """The statement's own errors followed by 3013, as BACKUP and RESTORE report every failure."""
    return SqlError(*messages, message(3013, statement))
