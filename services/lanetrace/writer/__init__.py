"""The writer process: the data-channel service and the trace-file store it
appends to."""
