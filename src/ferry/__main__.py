from ferry.cli import entry

entry()
