"""Experiments built on the library: the demo (`dvflnet demo`) and the alpha x temperature grid (`dvflnet ablate`)."""
