"""The migration service: durable workflows on Temporal, a REST API, and the state store behind both."""
