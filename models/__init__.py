"""Model side of streamscore: training, evaluation, the registry, the predictor, River learners."""
