"""Host-side input pipeline: TFDS + tf.data batches for `jax.pmap`, reproducible and resumable.

Training is an infinite stream of epochs. Each epoch's order is a pure function of (seed, epoch) and each example's
augmentation of (seed, process, epoch, position in the epoch), drawn with stateless TF random ops; so
`train_batches(start_step=k)` yields exactly batches k, k+1, ... of an uninterrupted run. Two sources:

- `cache=True` (small datasets): every host decodes the whole split once into memory, each epoch is a full
  permutation and each host takes its slice of every global batch; so the global batches (and augmentations) are the
  same for any number of hosts and devices, and a run can resume on another topology. Resuming skips nothing.
- otherwise the encoded examples stream from TFDS in file order through a shuffle buffer seeded per epoch; resuming
  mid-epoch reads (without decoding) the examples of that epoch that came before.

Datasets are never downloaded: an unprepared dataset raises. The exception is `fashion_mnist_debian`, which is built
from local files in seconds and so is prepared on first use.
"""

import collections
import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ghostnet_jax.data import augment, fashion_mnist, transforms  # noqa: F401 (fashion_mnist registers the dataset)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LOCAL_DATASETS = {"fashion_mnist_debian"}  # built from local files, never downloaded


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    channels: int
    num_train: int
    num_eval: int


def default_data_config() -> ml_collections.ConfigDict:
    """The `data` fields the pipeline reads, with ImageNet/timm defaults; configs start from this."""
    return ml_collections.ConfigDict(
        {
            "name": "imagenet2012",  # TFDS name
            "data_dir": ml_collections.FieldReference(None, field_type=str),  # None: TFDS's default
            "train_split": "train",
            "eval_split": "validation",
            "image_size": 224,
            "eval_crop_pct": 0.875,
            "interpolation": "bicubic",  # 'bilinear' | 'bicubic' | 'random' (train only; eval then uses bicubic)
            "crop_scale": (0.08, 1.0),
            "crop_ratio": (3 / 4, 4 / 3),
            "hflip": True,
            "randaugment": "rand-m9-mstd0.5",  # timm config string; '' = off
            "random_erasing": 0.25,  # probability; 0 = off
            "mean": IMAGENET_MEAN,  # 0..1 units, like timm; averaged to one value for 1-channel datasets
            "std": IMAGENET_STD,
            "shuffle_buffer": 16384,
            "num_parallel_calls": tf.data.AUTOTUNE,
            "cache": False,  # hold the decoded split in memory (small datasets)
            # Your own images instead of a TFDS dataset: DIR/SPLIT/CLASS/*.jpg (or .png, ...), read by TFDS's
            # ImageFolder; train on train_split, evaluate on eval_split or the first of test, val, validation it has.
            "folder": "",
            "num_classes": ml_collections.FieldReference(None, field_type=int),  # None: from the TFDS info
            "num_train": ml_collections.FieldReference(None, field_type=int),
            "num_eval": ml_collections.FieldReference(None, field_type=int),
        }
    )


def dataset_info(data: ml_collections.ConfigDict) -> DatasetInfo:
    """Sizes from the TFDS builder's info; config fields that are set win (needed for mock data, whose splits are
    empty)."""
    info = _builder(data).info
    splits = info.splits

    def size(field: str, split: str) -> int:
        if data[field] is not None:
            return data[field]
        if not splits:  # TFDS knows split sizes only once the dataset is prepared
            raise FileNotFoundError(_not_prepared(data))
        return splits[split].num_examples  # also resolves slices such as 'train[:10%]'

    return DatasetInfo(
        num_classes=data.num_classes if data.num_classes is not None else info.features["label"].num_classes,
        channels=info.features["image"].shape[-1],
        num_train=size("num_train", data.train_split),
        num_eval=size("num_eval", data.eval_split),
    )


def train_batches(
    data: ml_collections.ConfigDict, *, global_batch_size: int, seed: int, start_step: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite training batches for this host: {'image': float32 [devices, per_device, H, W, C], 'label': int32
    [devices, per_device]}. Batch k depends only on (data, global_batch_size, seed, k)."""
    per_device = _per_device_batch(global_batch_size)
    local_batch = per_device * jax.local_device_count()
    info = dataset_info(data)
    builder = _builder(data)
    if data.cache:  # every host holds the whole split and streams the global batches
        base_seed = tf.constant([seed, 0], tf.int64)
        images, labels = _load_in_memory(builder, data, data.train_split)
        epoch_records, num_examples = _permuted_epochs(images, labels, base_seed), len(labels)
        stream_batch = global_batch_size
    else:  # every host streams batches from its own slice of the split
        base_seed = tf.constant([seed, jax.process_index()], tf.int64)
        source, num_examples = _host_share(builder, data, data.train_split, info.num_train, drop_remainder=True)
        epoch_records = _shuffled_epochs(source, data, base_seed)
        stream_batch = local_batch

    start_epoch, offset = divmod(start_step * stream_batch, num_examples)

    def epoch_stream(epoch: tf.Tensor) -> tf.data.Dataset:
        epoch_seed = tf.random.experimental.stateless_fold_in(base_seed, epoch)
        return (
            epoch_records(epoch)
            .enumerate()
            .map(lambda index, ex: (tf.random.experimental.stateless_fold_in(epoch_seed, index), ex))
        )

    transform = train_transform(data, info.channels)
    ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_stream).skip(offset)
    if stream_batch != local_batch:  # this host's slice of each global batch, before any decoding or augmentation
        host = jax.process_index()
        ds = ds.enumerate().filter(lambda i, _: (i % stream_batch) // local_batch == host).map(lambda _, item: item)
    ds = ds.map(lambda example_seed, ex: transform(ex, example_seed), num_parallel_calls=data.num_parallel_calls)
    ds = ds.batch(local_batch, drop_remainder=True)
    yield from _to_device_layout(_with_options(ds).prefetch(tf.data.AUTOTUNE), per_device)


def eval_batches(data: ml_collections.ConfigDict, *, global_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the eval split in the layout of `train_batches`, plus 'mask' (float32 [devices, per_device]: 1 for
    real examples, 0 for padding). Every host yields ceil(num_eval / global_batch_size) batches, so each example is
    counted exactly once across hosts."""
    per_device = _per_device_batch(global_batch_size)
    local_batch = per_device * jax.local_device_count()
    info = dataset_info(data)
    builder = _builder(data)
    source, _ = _host_share(builder, data, data.eval_split, info.num_eval, drop_remainder=False)
    mean, std = channel_stats(data.mean, data.std, info.channels)
    interpolation = "bicubic" if data.interpolation == "random" else data.interpolation

    def transform(ex: dict) -> dict:
        image = transforms.decode(ex["image"], info.channels)
        image = transforms.resize_shorter_and_centre_crop(image, data.image_size, data.eval_crop_pct, interpolation)
        return {
            "image": transforms.normalise(image, mean, std),
            "label": tf.cast(ex["label"], tf.int32),
            "mask": tf.constant(1.0),
        }

    real = source.map(transform, num_parallel_calls=data.num_parallel_calls)
    padding = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros([data.image_size, data.image_size, info.channels]),
            "label": tf.constant(0),
            "mask": tf.constant(0.0),
        }
    ).repeat()
    num_batches = math.ceil(info.num_eval / global_batch_size)
    ds = real.concatenate(padding).take(num_batches * local_batch).batch(local_batch)
    yield from _to_device_layout(_with_options(ds).prefetch(tf.data.AUTOTUNE), per_device)


def prefetch_to_device(iterator: Iterable[dict[str, np.ndarray]], size: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Transfers batches to the local devices `size` ahead, each array split along axis 0 (one slice per device),
    which is the layout `jax.pmap` consumes without another copy."""
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))
    queue = collections.deque()
    for batch in iterator:
        queue.append(jax.tree.map(lambda x: jax.device_put(x, sharding), batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


# ---------------------------------------------------------------------------------------------------------------------
# Sources.


def _builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    if data.folder:
        return image_folder(data.folder)
    builder = tfds.builder(data.name, data_dir=data.data_dir)
    if data.name in _LOCAL_DATASETS and not builder.is_prepared():
        skip_stats = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
        try:
            builder.download_and_prepare(download_config=skip_stats)
        except FileExistsError:  # another process (a host of this run) prepared it at the same time
            builder = tfds.builder(data.name, data_dir=data.data_dir)
            if not builder.is_prepared():
                raise
    return builder


def image_folder(directory: str) -> tfds.ImageFolder:
    """TFDS's reader of `directory/SPLIT/CLASS/*.jpg|png|...` (class names in sorted order, 3-channel images of any
    size); a directory without that layout is a FileNotFoundError that says what was expected."""
    if not tf.io.gfile.isdir(directory):
        raise FileNotFoundError(f"config.data.folder {directory!r} is not a directory")
    builder = tfds.ImageFolder(directory)
    if not builder.info.splits:
        raise FileNotFoundError(
            f"config.data.folder {directory!r} holds no images as SPLIT/CLASS/IMAGE (e.g. train/cat/1.jpg)"
        )
    return builder


def resolve_folder_splits(data: ml_collections.ConfigDict) -> None:
    """For an image folder: checks that `data.train_split` exists, and makes `data.eval_split` the first of itself,
    'test', 'val' and 'validation' that the folder has. Errors list the folder's splits."""
    if not data.folder:
        return
    splits = sorted(image_folder(data.folder).info.splits)
    if data.train_split not in splits:
        raise ValueError(
            f"config.data.folder {data.folder!r} has no {data.train_split!r} split (config.data."
            f"train_split); it has {splits}"
        )
    candidates = [data.eval_split, "test", "val", "validation"]
    found = next((split for split in candidates if split in splits), None)
    if found is None:
        raise ValueError(
            f"config.data.folder {data.folder!r} has none of the eval splits {candidates}; it has {splits}"
        )
    data.eval_split = found


def _not_prepared(data: ml_collections.ConfigDict) -> str:
    where = data.data_dir or "TFDS's default data_dir"
    if data.name == "imagenet2012":
        how = (
            "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into TFDS's manual_dir "
            "(<data_dir>/downloads/manual) and run `tfds build imagenet2012`"
        )
    else:
        how = f"run `tfds build {data.name}` (with --data_dir if not the default) on a machine with network access"
    return f"dataset {data.name!r} is not prepared in {where}: {how}. This pipeline never downloads."


def _as_dataset(
    builder: tfds.core.DatasetBuilder, data: ml_collections.ConfigDict, split, decode: bool = False
) -> tf.data.Dataset:
    """The split in file order, images left encoded unless `decode` (decoding happens fused with cropping)."""
    decoders = None if decode else {"image": tfds.decode.SkipDecoding()}
    try:
        return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    except AssertionError as error:  # TFDS's "could not find data" check
        if builder.is_prepared():
            raise
        raise FileNotFoundError(_not_prepared(data)) from error


def _host_share(
    builder: tfds.core.DatasetBuilder,
    data: ml_collections.ConfigDict,
    split: str,
    num_examples: int,
    *,
    drop_remainder: bool,
) -> tuple[tf.data.Dataset, int]:
    """This process's share of `split` and its size: the whole split on one host, an even slice otherwise (TFDS's
    `even_splits`; an image folder, whose builder reads whole splits only, is sharded in its file order, the same on
    every host)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return _as_dataset(builder, data, split), num_examples
    if data.folder:
        source = _as_dataset(builder, data, split)
        if drop_remainder:
            per_host = num_examples // count
            return source.take(per_host * count).shard(count, index), per_host
        return source.shard(count, index), len(range(index, num_examples, count))
    share = tfds.even_splits(split, n=count, drop_remainder=drop_remainder)[index]
    return _as_dataset(builder, data, share), builder.info.splits[share].num_examples


def _load_in_memory(builder: tfds.core.DatasetBuilder, data: ml_collections.ConfigDict, split):
    """The decoded split as two tensors (needs a fixed image shape)."""
    if not builder.info.features["image"].shape[0]:
        raise ValueError(f"cache=True needs fixed-size images; {data.name} has variable sizes")
    arrays = next(iter(tfds.as_numpy(_as_dataset(builder, data, split, decode=True).batch(2**31 - 1))))
    return tf.constant(arrays["image"]), tf.constant(arrays["label"])


def _permuted_epochs(images: tf.Tensor, labels: tf.Tensor, base_seed: tf.Tensor):
    """epoch -> that epoch's examples as a full random permutation of the in-memory split."""
    order_seed = tf.random.experimental.stateless_fold_in(base_seed, -1)

    def records(epoch: tf.Tensor) -> tf.data.Dataset:
        seed = tf.random.experimental.stateless_fold_in(order_seed, epoch)
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(labels)[0]), seed)
        return tf.data.Dataset.from_tensor_slices(order).map(lambda i: {"image": images[i], "label": labels[i]})

    return records


def _shuffled_epochs(source: tf.data.Dataset, data: ml_collections.ConfigDict, base_seed: tf.Tensor):
    """epoch -> `source` streamed in file order through a shuffle buffer seeded by (seed, epoch)."""
    order_seed = tf.random.experimental.stateless_fold_in(base_seed, -1)

    def records(epoch: tf.Tensor) -> tf.data.Dataset:
        seed = tf.random.experimental.stateless_fold_in(order_seed, epoch)
        shuffle_seed = tf.random.stateless_uniform([], seed, minval=None, maxval=None, dtype=tf.int64)
        return source.shuffle(data.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

    return records


# ---------------------------------------------------------------------------------------------------------------------
# Transforms and layout.


def channel_stats(
    mean: Sequence[float], std: Sequence[float], channels: int, *, field: str = "data.mean/std"
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std per channel; 3-channel statistics are averaged for a greyscale dataset. `field` names the config
    fields in the error."""
    mean, std = tuple(mean), tuple(std)
    if channels == 1 and len(mean) == 3 and len(std) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"config.{field} have {len(mean)}/{len(std)} values for a {channels}-channel dataset")
    return mean, std


def train_transform(data: ml_collections.ConfigDict, channels: int):
    """timm's train transform: RandomResizedCrop (fused with JPEG decoding), flip, RandAugment, normalise, erasing."""
    mean, std = channel_stats(data.mean, data.std, channels)
    rand_augment = augment.parse_rand_augment(data.randaugment) if data.randaugment else None
    fill = augment.fill_colour(mean)
    size = [data.image_size, data.image_size]

    def transform(ex: dict, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        s_crop, s_interp, s_flip, s_augment, s_erase = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
        image = transforms.decode_and_random_crop(ex["image"], s_crop, channels, data.crop_scale, data.crop_ratio)
        if data.interpolation == "random":
            interpolation = tf.random.stateless_uniform([], s_interp, 0, 2, dtype=tf.int32)
        else:
            interpolation = data.interpolation
        image = tf.ensure_shape(transforms.resize(image, size, interpolation), size + [channels])
        if data.hflip:
            image = transforms.random_flip(image, s_flip)
        if rand_augment is not None:
            image = augment.rand_augment(image, rand_augment, s_augment, fill=fill, interpolation=data.interpolation)
        image = transforms.normalise(image, mean, std)
        if data.random_erasing > 0:
            image = augment.random_erasing(image, data.random_erasing, s_erase)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

    return transform


def _per_device_batch(global_batch_size: int) -> int:
    shards = jax.process_count() * jax.local_device_count()
    if global_batch_size % shards:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by process_count ({jax.process_count()}) x "
            f"local_device_count ({jax.local_device_count()}) = {shards}"
        )
    return global_batch_size // shards


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True  # parallel map, same order: required for reproducible batches
    return ds.with_options(options)


def _to_device_layout(ds: tf.data.Dataset, per_device: int) -> Iterator[dict[str, np.ndarray]]:
    devices = jax.local_device_count()
    for batch in ds.as_numpy_iterator():
        yield {k: v.reshape((devices, per_device) + v.shape[1:]) for k, v in batch.items()}
