"""Storage locations (workdirs, checkpoints, teachers) as `etils.epath.Path`: a local path or a URL such as gs://.

`pathlib` would silently turn `gs://bucket/run` into the local directory `gs:/bucket/run`; epath keeps the URL and
reaches it through the matching filesystem (tf.io.gfile / fsspec), so one code path serves a laptop and a pod.
"""

from __future__ import annotations

import os

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def storage_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: URLs unchanged, local paths made absolute (Orbax needs absolute paths)."""
    return epath.Path(path) if is_url(path) else epath.Path(os.path.abspath(os.fspath(path)))


def write_atomically(path: epath.Path, text: str) -> None:
    """Writes `text` to `path` under a temporary name, then renames it over `path`: a reader (another host, a
    resumed run) sees the old file or the new one, never half of one (on gs://, objects appear whole)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)
