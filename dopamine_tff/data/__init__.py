"""Data loaders and the split of a data set into hospitals."""
