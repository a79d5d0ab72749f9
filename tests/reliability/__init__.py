"""Integrity of the archive: what a damaged, edited or half-written archive does on read."""
