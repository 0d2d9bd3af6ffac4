"""The client's pull: ssh/rsync argv, snapshots, one run, its record, metrics, lock."""
