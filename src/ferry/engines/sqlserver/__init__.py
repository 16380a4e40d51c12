"""SQL Server: native .bak/.trn media reader, restore chain selection, findings."""
