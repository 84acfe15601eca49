"""Kernel state: what nsproxy observes (observed.py, pure data), the rtnetlink channel it talks
through (rtnl.py: dumps and lo-up hand-encoded, decoded by nlparse.py; other changes encoded with
pyroute2's message classes in rtnl_changes.py, imported on the first change only) and the per-run
session that owns one channel per namespace (session.py, with the Host seam tests fake).
"""
