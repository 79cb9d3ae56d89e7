"""On-disk shard formats: one folder per format, each with a README.md spec."""
