"""Predicted against measured: the shared H100 step times and the published numbers."""
