"""Uncertainty estimators for the gate: margin, MC dropout, ensemble MI, temperature scaling."""
