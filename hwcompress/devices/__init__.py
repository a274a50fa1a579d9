"""Target devices: descriptors (TOML data) and the catalog that finds them by name or alias."""

from hwcompress.devices.catalog import Catalog, catalog, packaged_devices_dir, resolve_device, user_devices_dir
from hwcompress.devices.descriptor import DeviceDescriptor, descriptor_from_dict, load_descriptor, user_config_dir, user_data_dir

__all__ = [
    "Catalog",
    "DeviceDescriptor",
    "catalog",
    "descriptor_from_dict",
    "load_descriptor",
    "packaged_devices_dir",
    "resolve_device",
    "user_config_dir",
    "user_data_dir",
    "user_devices_dir",
]
