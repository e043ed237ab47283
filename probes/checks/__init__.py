"""Pure checks over normalised evidence (no I/O): each returns findings or a Check."""
