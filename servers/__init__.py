"""Reference echo servers, one module per Linux I/O model.

`python -m servers MODEL` runs one; `servers.registry` knows them all.
"""
