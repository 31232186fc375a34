"""Ceph RBD images through Ceph's own change tracking: RBD snapshots and librbd's diff between them.

``names.py`` parses ``rbd:POOL[/NAMESPACE]/IMAGE``; ``cluster.py`` reaches the cluster through Debian's
librados/librbd bindings and turns their errors into cbtbackup's; ``snapshots.py`` names cbtbackup's
snapshots and decides whether the previous one still vouches for the changes; ``provider.py`` puts them
behind the provider interface; ``target.py`` is an image as a restore target.
"""
