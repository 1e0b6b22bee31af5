"""The release road: a recipe's stages, data to release folder, each stamped and resumable."""
