"""The one feature definition (pure Python/numpy: no Beam, gRPC or XGBoost imports) and its executors."""
