"""Pure domain types: positions, findings, plans and errors. Standard library only."""
