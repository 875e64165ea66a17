"""mtl: a reproducible multi-task learning pipeline for images (see README.md)."""
