"""The agent: a Temporal worker on a target host that runs restore activities for its targets."""
