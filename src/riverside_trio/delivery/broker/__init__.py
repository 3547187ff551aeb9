"""Brokers: what joins the nodes of a cluster (``broker_url``).

Without one, a server is alone and nothing here runs. :mod:`.redis` is the Redis broker.
"""
