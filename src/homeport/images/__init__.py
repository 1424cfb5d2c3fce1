"""Image building: Dockerfile steps, base root filesystems, the layer store."""
