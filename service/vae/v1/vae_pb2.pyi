from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InterpolationPath(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERPOLATION_PATH_LINEAR: _ClassVar[InterpolationPath]
    INTERPOLATION_PATH_SPHERICAL: _ClassVar[InterpolationPath]
INTERPOLATION_PATH_LINEAR: InterpolationPath
INTERPOLATION_PATH_SPHERICAL: InterpolationPath

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("mean", "log_var", "version")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOG_VAR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    mean: Tensor
    log_var: Tensor
    version: int
    def __init__(self, mean: _Optional[_Union[Tensor, _Mapping]] = ..., log_var: _Optional[_Union[Tensor, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("latents",)
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    latents: Tensor
    def __init__(self, latents: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("images", "version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("count", "seed", "temperature")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    count: int
    seed: int
    temperature: float
    def __init__(self, count: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("images", "latents", "seed", "version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    latents: Tensor
    seed: int
    version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class DenoiseRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DenoiseResponse(_message.Message):
    __slots__ = ("images", "version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("images", "samples", "seed")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    samples: int
    seed: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., samples: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("neg_elbo", "reconstruction", "kl", "nll", "samples", "seed", "version")
    NEG_ELBO_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    NLL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    neg_elbo: Tensor
    reconstruction: Tensor
    kl: Tensor
    nll: Tensor
    samples: int
    seed: int
    version: int
    def __init__(self, neg_elbo: _Optional[_Union[Tensor, _Mapping]] = ..., reconstruction: _Optional[_Union[Tensor, _Mapping]] = ..., kl: _Optional[_Union[Tensor, _Mapping]] = ..., nll: _Optional[_Union[Tensor, _Mapping]] = ..., samples: _Optional[int] = ..., seed: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("images", "latents", "steps", "path")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    latents: Tensor
    steps: int
    path: InterpolationPath
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., steps: _Optional[int] = ..., path: _Optional[_Union[InterpolationPath, str]] = ...) -> None: ...

class InterpolateResponse(_message.Message):
    __slots__ = ("images", "latents", "version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    latents: Tensor
    version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BatchingInfo(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay_us", "max_queue_rows", "instances")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_ROWS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay_us: int
    max_queue_rows: int
    instances: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay_us: _Optional[int] = ..., max_queue_rows: _Optional[int] = ..., instances: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "image_shape", "latent_dim", "version", "execution_provider", "batching", "max_sample_count", "arch", "dataset", "max_score_samples", "operations")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    latent_dim: int
    version: int
    execution_provider: str
    batching: BatchingInfo
    max_sample_count: int
    arch: str
    dataset: str
    max_score_samples: int
    operations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., image_shape: _Optional[_Iterable[int]] = ..., latent_dim: _Optional[int] = ..., version: _Optional[int] = ..., execution_provider: _Optional[str] = ..., batching: _Optional[_Union[BatchingInfo, _Mapping]] = ..., max_sample_count: _Optional[int] = ..., arch: _Optional[str] = ..., dataset: _Optional[str] = ..., max_score_samples: _Optional[int] = ..., operations: _Optional[_Iterable[str]] = ...) -> None: ...
