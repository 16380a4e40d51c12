"""A SQL Server restore model for Ferry's tests: a TDS server that pymssql can connect to, which runs the
T-SQL a restore driver sends against a model of a SQL Server instance. It is a test double, never offered
to users: it stores no pages and runs no recovery. See README.md in this folder.
"""

from tests.mssql_model.client import ModelClient
from tests.mssql_model.server import ModelServer

__all__ = ["ModelClient", "ModelServer"]
