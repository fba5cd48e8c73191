"""`amlfs daemon`: mounts declared in YAML, served and supervised for systemd."""
