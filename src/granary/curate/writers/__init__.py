"""Writers: where a pipeline's output goes (a new store version, or a directory of Parquet files)."""

from granary.curate.writers.sink import ParquetDirSink, Sink, StoreSink

__all__ = ["ParquetDirSink", "Sink", "StoreSink"]
