"""Delivery: the registry of local members, the hub that turns destinations into them, and
(with several nodes) the broker that reaches the others. Internal: the public names are
re-exported from :mod:`riverside_trio`."""
