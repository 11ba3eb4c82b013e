"""Data: records on disk -> encoded samples -> batches."""
