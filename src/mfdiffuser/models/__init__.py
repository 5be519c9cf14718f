"""Network blocks shared by MF-Diffuser and the baselines, so comparisons share implementations."""
