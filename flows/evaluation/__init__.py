"""Measurement: rate-task curves against classical codecs (evaluate) and one-image round trips
(roundtrip). Ingest and query never import this package."""
