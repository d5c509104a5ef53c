"""Conversions from other libraries' layers (each module imports its library when used)."""
