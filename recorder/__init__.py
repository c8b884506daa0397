"""What is on disk: segments, the index, retention and export."""
