"""VM disks through QEMU's own change tracking: persistent dirty bitmaps in qcow2 images, read over NBD.

``qmp.py`` talks to a QEMU process (a running VM, or a ``qemu-storage-daemon`` cbtbackup starts for an image
no VM uses: ``storage_daemon.py``); ``bitmaps.py`` names and checks cbtbackup's bitmaps; ``fleecing.py``
holds a point-in-time export while a backup reads it; ``nbd_client.py`` reads it; ``provider.py`` puts them
behind the provider interface.
"""
