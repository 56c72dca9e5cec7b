"""Reporting: report.html and its plots, the summary, findings and lessons, rankings, the results
index, `bench compare`, and the explain page; templates/ holds the Jinja2 pages.
"""
