"""LVM thin volumes through the thin pool's own change tracking: thin snapshots and ``thin_delta``.

``lvm.py`` runs the LVM tools and reads their JSON reports; ``delta.py`` reserves the pool's metadata
snapshot and reads ``thin_delta``'s report; ``provider.py`` names cbtbackup's snapshots, decides whether the
previous one still vouches, and puts it all behind the provider interface.
"""
