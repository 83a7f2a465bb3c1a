from protos.streamscore.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureVector(_message.Message):
    __slots__ = ("values", "names")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[float]] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("transaction_id", "model_name", "features", "transaction")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    model_name: str
    features: FeatureVector
    transaction: _events_pb2.Transaction
    def __init__(self, transaction_id: _Optional[str] = ..., model_name: _Optional[str] = ..., features: _Optional[_Union[FeatureVector, _Mapping]] = ..., transaction: _Optional[_Union[_events_pb2.Transaction, _Mapping]] = ...) -> None: ...

class ScoreError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("transaction_id", "score", "model_version", "online_score", "online_model_version", "latency_us", "error", "features", "state_age_ms", "customer_known", "terminal_known")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONLINE_SCORE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    STATE_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_KNOWN_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_KNOWN_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    score: float
    model_version: str
    online_score: float
    online_model_version: str
    latency_us: int
    error: ScoreError
    features: FeatureVector
    state_age_ms: int
    customer_known: bool
    terminal_known: bool
    def __init__(self, transaction_id: _Optional[str] = ..., score: _Optional[float] = ..., model_version: _Optional[str] = ..., online_score: _Optional[float] = ..., online_model_version: _Optional[str] = ..., latency_us: _Optional[int] = ..., error: _Optional[_Union[ScoreError, _Mapping]] = ..., features: _Optional[_Union[FeatureVector, _Mapping]] = ..., state_age_ms: _Optional[int] = ..., customer_known: _Optional[bool] = ..., terminal_known: _Optional[bool] = ...) -> None: ...
