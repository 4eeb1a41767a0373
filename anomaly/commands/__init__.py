"""Click commands, one module per area; anomaly.cli gathers their COMMANDS lists into one group."""
