"""Images: a content-addressed store of OCI image layers unpacked for overlayfs."""
