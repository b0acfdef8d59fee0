"""The streaming export formats (what ``export_trace`` writes), apart from
the exporters: the CLI's parser lists them without loading the exporters."""

FORMATS = ("perfetto", "chrome", "folded", "jsonl")
