"""Steering and quantization blocks (filled in as the steering module lands)."""
