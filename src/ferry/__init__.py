"""Ferry: database migrations from the backups you already take."""

__version__ = "0.1.0"
