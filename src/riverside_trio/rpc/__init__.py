"""Request/reply, signals and restorable sessions on top of the Handler and its codecs.

The public names are re-exported from :mod:`riverside_trio`; this package imports nothing
itself, so that the connection can use its pieces without an import cycle.
"""
