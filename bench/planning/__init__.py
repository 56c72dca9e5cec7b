"""Planning a run: which points a sweep measures and in what order (the sweep, the lessons' extra
points, model selection, the --find-max search).
"""
