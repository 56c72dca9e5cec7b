"""The load engine: worker processes (`python -m loadgen`) that drive an echo server."""
