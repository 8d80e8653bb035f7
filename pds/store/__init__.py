"""The data directory: atomic files, locks, block and blob stores, repositories."""
