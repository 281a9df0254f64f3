"""Learning tasks: model, data loading, partitioning, train and test loops."""
