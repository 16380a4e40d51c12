"""The `ferry` command line: parses, calls the layers, renders tables and JSON."""
