"""Storing: the run directory (run.json, points.csv, histograms.jsonl), its columns, and the statistics
over repeats written beside them.
"""
