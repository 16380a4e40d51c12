"""PostgreSQL: base backups and WAL archives read from a store, restored onto a standby, cut over."""
