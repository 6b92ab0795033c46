"""On-disk stores of boxes and node features (HDF5 or Zarr, one schema): docs/cache-format.md."""

from hoitool.store.reader import StoreReader, open_store
from hoitool.store.schema import SCHEMA_VERSION
from hoitool.store.staging import StagedStore, shard_path, sidecar

__all__ = ["SCHEMA_VERSION", "StagedStore", "StoreReader", "open_store", "shard_path", "sidecar"]
