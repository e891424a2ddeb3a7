"""Telling someone what happened: the control plane, or local records in standalone mode."""
