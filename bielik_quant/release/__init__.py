"""The release road: the stages from data to the release folder a user uploads."""
