"""One module per dataset format, each with ``load(root, factor, ...) -> CameraSet`` (numpy + stdlib only)."""
