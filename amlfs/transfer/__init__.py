"""Moving whole files between a datastore and local disk: download, upload, and the
durable journal that output mounts keep of what they must still upload."""
