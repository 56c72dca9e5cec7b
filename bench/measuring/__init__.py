"""Measuring around a point: process samplers, the host's fingerprint and probe, interference, the
kernel's TCP counters, the accept queue, shed connections, stability over time.
"""
