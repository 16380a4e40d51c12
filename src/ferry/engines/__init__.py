"""Database engines: how each one's backups are read, chained and restored."""
