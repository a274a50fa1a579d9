"""GPU facts for the report: NVML (nvidia-ml-py's ``pynvml``), PyTorch's CUDA view, and Jetson sysfs.

A latency number from a GPU means little without the clocks it ran at: a GPU that heats up or hits its
power limit lowers its SM clock in the middle of a measurement. So the profilers sample clocks,
temperature and power right before and right after the timed iterations, and :func:`throttle_notes`
turns a drop into a warning in the report.

Every fact that cannot be read is ``"unknown"``: no NVML library (a machine without the driver, most
Jetsons), an NVML call the GPU does not support, or no ``pynvml`` at all. Reading facts never raises.
``pynvml`` is imported only when a monitor is opened.
"""

from __future__ import annotations

from typing import Any

from hwcompress_profiler_tensorrt import jetson

UNKNOWN = "unknown"
NVML_HINT = "pip install nvidia-ml-py"
# A drop of the SM clock larger than this between the start and the end of timing is reported.
THROTTLE_DROP = 0.05

# NVML "clocks event reasons" (formerly throttle reasons) that mean the GPU slowed itself down.
# Idle, application-clock and display reasons are normal and not reported.
CLOCK_EVENT_REASONS = {
    0x4: "power cap (software)",
    0x8: "hardware slowdown",
    0x20: "thermal (software)",
    0x40: "thermal (hardware)",
    0x80: "power brake (hardware)",
}


def decode_clock_event_reasons(mask: int | str) -> list[str]:
    """Names of the slow-down reasons set in an NVML clocks-event bitmask (``[]`` when unknown)."""
    if not isinstance(mask, int) or isinstance(mask, bool):
        return []
    return [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class GpuMonitor:
    """NVML facts for one CUDA device, with all failures turned into ``"unknown"``.

    Args:
        device_index: CUDA device index (as torch numbers it).
        pci_bus_id: the device's PCI bus id; NVML numbers GPUs by PCI order and ignores
            ``CUDA_VISIBLE_DEVICES``, so the bus id is what finds the same GPU.
        jetson_root: filesystem root for the Jetson sysfs fallbacks (tests use a temporary folder).
    """

    def __init__(self, device_index: int = 0, pci_bus_id: str | None = None, jetson_root: str = "/") -> None:
        self.device_index = device_index
        self.status = "not started"
        self._nvml: Any = None
        self._handle: Any = None
        self._jetson_root = jetson_root
        self._on_jetson = jetson.is_jetson(jetson_root)
        try:
            import pynvml
        except ImportError:
            self.status = f"unavailable: nvidia-ml-py is not installed ({NVML_HINT})"
            return
        try:
            pynvml.nvmlInit()
        except Exception as error:  # NVMLError_LibraryNotFound, DriverNotLoaded, ... or no driver at all
            self.status = f"unavailable: {_text(error) or type(error).__name__}"
            return
        self._nvml = pynvml
        try:
            if pci_bus_id:
                try:
                    self._handle = pynvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id)
                except Exception:
                    # Integrated GPUs report no real PCI address. With a single GPU, index 0 is
                    # unambiguous; with several, a wrong GPU's clocks would be worse than none.
                    if pynvml.nvmlDeviceGetCount() != 1:
                        raise
                    self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            else:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self.status = "ok"
        except Exception as error:
            self.status = f"no NVML handle for the GPU: {_text(error) or type(error).__name__}"

    def _call(self, name: str, *args: Any) -> Any:
        """``pynvml.<name>(handle, *args)``, or UNKNOWN when it is missing or fails."""
        if self._nvml is None or self._handle is None:
            return UNKNOWN
        function = getattr(self._nvml, name, None)
        if function is None:
            return UNKNOWN
        try:
            return function(self._handle, *args)
        except Exception:
            return UNKNOWN

    def _system(self, name: str) -> Any:
        if self._nvml is None:
            return UNKNOWN
        try:
            return getattr(self._nvml, name)()
        except Exception:
            return UNKNOWN

    def static_facts(self) -> dict[str, Any]:
        """Facts that do not change during a measurement: names, versions, limits, sizes."""
        name = self._call("nvmlDeviceGetName")
        driver = self._system("nvmlSystemGetDriverVersion")
        cuda_driver = self._system("nvmlSystemGetCudaDriverVersion")
        power_limit = self._call("nvmlDeviceGetEnforcedPowerLimit")
        if power_limit == UNKNOWN:
            power_limit = self._call("nvmlDeviceGetPowerManagementLimit")
        memory = self._call("nvmlDeviceGetMemoryInfo")
        nvml = self._nvml
        sm_max = self._call("nvmlDeviceGetMaxClockInfo", nvml.NVML_CLOCK_SM) if nvml else UNKNOWN
        mem_max = self._call("nvmlDeviceGetMaxClockInfo", nvml.NVML_CLOCK_MEM) if nvml else UNKNOWN
        persistence = self._call("nvmlDeviceGetPersistenceMode")
        return {
            "nvml": self.status,
            "nvml_gpu": _text(name) if name != UNKNOWN else UNKNOWN,
            "driver_version": _text(driver) if driver != UNKNOWN else UNKNOWN,
            "cuda_driver_version": _cuda_version(cuda_driver),
            "power_limit_w": round(power_limit / 1000.0, 1) if isinstance(power_limit, (int, float)) else UNKNOWN,
            "gpu_memory_total_mb": round(memory.total / 2**20) if memory != UNKNOWN else UNKNOWN,
            "sm_clock_max_mhz": sm_max,
            "mem_clock_max_mhz": mem_max,
            "persistence_mode": {0: "off", 1: "on"}.get(persistence, UNKNOWN) if persistence != UNKNOWN else UNKNOWN,
        }

    def sample(self) -> dict[str, Any]:
        """Facts that move during a measurement: clocks, temperature, power, memory in use, slow-downs."""
        nvml = self._nvml
        if nvml is not None:
            sm = self._call("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM)
            mem = self._call("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_MEM)
            temperature = self._call("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
            power = self._call("nvmlDeviceGetPowerUsage")
            memory = self._call("nvmlDeviceGetMemoryInfo")
            reasons = self._call("nvmlDeviceGetCurrentClocksEventReasons")
            if reasons == UNKNOWN:  # nvidia-ml-py before 12.535 only has the old name
                reasons = self._call("nvmlDeviceGetCurrentClocksThrottleReasons")
            pstate = self._call("nvmlDeviceGetPerformanceState")
        else:
            sm = mem = temperature = power = memory = reasons = pstate = UNKNOWN
        if self._on_jetson:
            # The integrated GPU's clock and temperature are in sysfs even where NVML is absent.
            if sm == UNKNOWN:
                sm = jetson.gpu_clock_mhz(self._jetson_root)
            if temperature == UNKNOWN:
                temperature = jetson.gpu_temperature_c(self._jetson_root)
        return {
            "sm_clock_mhz": sm,
            "mem_clock_mhz": mem,
            "temperature_c": temperature,
            "power_w": round(power / 1000.0, 1) if isinstance(power, (int, float)) else UNKNOWN,
            "gpu_memory_used_mb": round(memory.used / 2**20) if memory != UNKNOWN else UNKNOWN,
            "clock_event_reasons": ", ".join(decode_clock_event_reasons(reasons)) or ("none" if reasons != UNKNOWN else UNKNOWN),
            "performance_state": f"P{pstate}" if isinstance(pstate, int) else UNKNOWN,
        }

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
            self._handle = None

    def __enter__(self) -> "GpuMonitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cuda_version(value: Any) -> str:
    """NVML's CUDA driver version integer (12040) as ``"12.4"``."""
    if isinstance(value, int) and value > 0:
        return f"{value // 1000}.{(value % 1000) // 10}"
    return UNKNOWN


def with_suffix(sample: dict[str, Any], suffix: str) -> dict[str, Any]:
    """``{"sm_clock_mhz": 1980}`` -> ``{"sm_clock_mhz_start": 1980}``."""
    return {f"{key}_{suffix}": value for key, value in sample.items()}


def throttle_notes(start: dict[str, Any], end: dict[str, Any], threshold: float = THROTTLE_DROP) -> list[str]:
    """Warnings when the GPU slowed down during the timed iterations.

    Args:
        start: a :meth:`GpuMonitor.sample` taken right before timing.
        end: one taken right after.
        threshold: relative clock drop that counts as throttling.

    Returns:
        Zero or one warning line naming the clocks and the reasons NVML gave.
    """
    drops = []
    for key, label in (("sm_clock_mhz", "SM"), ("mem_clock_mhz", "memory")):
        before, after = start.get(key), end.get(key)
        if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before > 0:
            if after < before * (1.0 - threshold):
                drops.append(f"{label} clock {before:g} -> {after:g} MHz")
    reasons = end.get("clock_event_reasons")
    slowed = isinstance(reasons, str) and reasons not in ("none", UNKNOWN, "")
    if not drops and not slowed:
        return []
    what = "; ".join(drops) if drops else "clocks held below their maximum"
    why = f" (NVML reasons: {reasons})" if slowed else ""
    return [
        f"GPU throttling during the measurement: {what}{why}. Latency is pessimistic and unstable: "
        "let the GPU cool, check its power limit, or lock clocks (sudo nvidia-smi --lock-gpu-clocks; "
        "on a Jetson, sudo jetson_clocks)"
    ]


def torch_device_facts(device_index: int) -> dict[str, Any]:
    """What PyTorch's CUDA runtime says about the device (name, compute capability, SMs, versions)."""
    import torch

    properties = torch.cuda.get_device_properties(device_index)
    return {
        "gpu": properties.name,
        "compute_capability": f"{properties.major}.{properties.minor}",
        "sm_count": properties.multi_processor_count,
        "gpu_memory_total_mb": round(properties.total_memory / 2**20),
        "integrated_gpu": bool(getattr(properties, "is_integrated", False)),
        "cuda_runtime_version": torch.version.cuda or UNKNOWN,
        "torch_version": torch.__version__,
    }


def pci_bus_id(device_index: int) -> str | None:
    """The device's PCI bus id in NVML's ``domain:bus:device.function`` form, when torch knows it."""
    import torch

    properties = torch.cuda.get_device_properties(device_index)
    domain = getattr(properties, "pci_domain_id", None)
    bus = getattr(properties, "pci_bus_id", None)
    device = getattr(properties, "pci_device_id", None)
    if bus is None or device is None:
        return None
    return f"{int(domain or 0):08x}:{int(bus):02x}:{int(device):02x}.0"


def device_facts(device_index: int, monitor: GpuMonitor | None = None) -> dict[str, Any]:
    """Static facts of one device: PyTorch's view, NVML's, and the Jetson board's where on one.

    PyTorch's values win where both know (its device numbering is the one being measured); NVML adds
    what only the driver knows. Never raises.
    """
    facts: dict[str, Any] = {}
    try:
        facts.update(torch_device_facts(device_index))
    except Exception as error:
        facts["gpu"] = UNKNOWN
        facts["cuda_error"] = f"{type(error).__name__}: {error}"
    if monitor is not None:
        for key, value in monitor.static_facts().items():
            if facts.get(key, UNKNOWN) == UNKNOWN:
                facts[key] = value
    if jetson.is_jetson():
        facts.update(jetson.jetson_facts())
    return facts
