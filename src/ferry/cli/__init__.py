"""The `ferry` command line: parses, calls the layers, renders tables and JSON."""

import sys


def entry() -> None:
    """The console script. PostgreSQL runs `ferry wal-push` / `wal-fetch` once per WAL segment, so those
    are answered before the rest of the CLI (typer, rich, every engine) is even imported."""
    if len(sys.argv) > 1 and sys.argv[1] in ("wal-push", "wal-fetch"):
        from ferry.cli.walcmd import main as wal_main

        sys.exit(wal_main(sys.argv[1:]))
    from ferry.cli.main import main

    main()
