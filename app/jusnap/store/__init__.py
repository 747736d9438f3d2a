"""Where snapshot images live: manifests and small images per snapshot, pages by content."""
