"""Kernel state: what nsproxy observes (observed.py, pure data), the rtnetlink channel it talks
through (rtnl.py, pyroute2 codecs) and the per-run session that owns one channel per namespace
(session.py). Import the submodules directly; only rtnl/session import pyroute2.
"""
