"""The data: where a dataset comes from, how it is read, synced, decoded once and checked."""
