"""Tracing with strace: `bench profile` (system calls per request) and `bench explain` (one request's
path), the attachment to a server's tree, and reading the trace.
"""
