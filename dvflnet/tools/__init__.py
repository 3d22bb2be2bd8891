"""Dataset tools: prepare (official splits -> CSVs), check-split (leaks), resize (video trees)."""
