"""The pretraining data pipeline: cleanup, anonymisation, stylometric features, quality filter."""
