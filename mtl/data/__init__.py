"""The data stages (ingest, clean, select) and what they share: readers, labels, images, paths."""
