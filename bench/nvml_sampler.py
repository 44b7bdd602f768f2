"""Peak device memory of this process as NVML sees it, sampled from a background thread.

Why NVML and not the framework or cuMemGetInfo: under gpushim, cuMemGetInfo is answered by gpushim itself
(cached memory counts as free), and the frameworks only know what passes through their own allocator. NVML
asks the kernel driver, so it sees every byte the process holds, whoever allocated it.

Why ctypes: the device image may lack nvidia-ml-py, and libnvidia-ml.so.1 ships with the driver.

Two readings per sample:
- per process: nvmlDeviceGetComputeRunningProcesses_v3, the entry whose pid is ours. The headline figure.
- device delta: nvmlDeviceGetMemoryInfo's `used` minus its value when the sampler was created (before the
  program created its CUDA context). A fallback for sandboxes where NVML reports other pids or no usage;
  it also counts anything else running on the card, which on a lent machine is nothing.

Which GPU: the process's CUDA device 0, found by the UUID in CUDA_VISIBLE_DEVICES when it holds one (as
bench/run_macro.sh --gpus sets it), else by index (nvml_device_choice); the JSON line names it.

Stdlib only: this file also imports (and degrades to "unavailable") on machines without a GPU.
Run it directly for a one-shot reading: `python3 bench/nvml_sampler.py`.
"""

import ctypes
import os
import threading
import time

GIB = float(1 << 30)

_NVML_SUCCESS = 0
_NVML_ERROR_INSUFFICIENT_SIZE = 7
_NVML_VALUE_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # (unsigned long long)(-1)


class _Memory(ctypes.Structure):  # nvmlMemory_t (v1)
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class _ProcessInfo(ctypes.Structure):  # nvmlProcessInfo_v2_t, what the _v3 process queries fill
    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


def nvml_device_choice(environ=None):
    """Which NVML device is the process's CUDA device 0, as ("uuid", "GPU-...") or ("index", n).
    NVML ignores CUDA_VISIBLE_DEVICES and numbers the GPUs by PCI bus id, CUDA by speed unless
    CUDA_DEVICE_ORDER=PCI_BUS_ID: a UUID in CUDA_VISIBLE_DEVICES (what bench/run_macro.sh --gpus sets) names
    the same card for both; an index is mapped as is. BENCH_NVML_INDEX overrides."""
    env = os.environ if environ is None else environ
    override = env.get("BENCH_NVML_INDEX", "").strip()
    if override.isdigit():
        return ("index", int(override))
    visible = env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if visible.startswith("GPU-"):
        return ("uuid", visible)
    return ("index", int(visible) if visible.isdigit() else 0)


class NvmlPeakSampler:
    """Samples every `interval_s` from a daemon thread. Peaks are kept for the whole life of the sampler
    and, separately, for the window between begin_timed() and end_timed()."""

    def __init__(self, device_index=None, interval_s=0.005, pid=None):
        self.interval_s = interval_s
        self.pid = os.getpid() if pid is None else pid
        self.device_by = nvml_device_choice() if device_index is None else ("index", device_index)
        self.device_index = self.device_by[1] if self.device_by[0] == "index" else None
        self.device_uuid = None    # the watched GPU's UUID, as NVML reports it
        self.error = None          # why NVML is unusable, or None
        self._lib = None
        self._handle = ctypes.c_void_p()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._timed = False
        self._proc_capacity = 64
        self.baseline_used = None
        self.samples = 0
        self.proc_samples = 0      # samples in which our pid was listed with a usage
        self.pids_seen = set()
        self.sample_seconds = 0.0  # time spent inside sample(), to report the sampler's own cost
        self.first_sample_at = None
        self.last_sample_at = None
        self.peak_proc = {"all": None, "timed": None}
        self.peak_dev = {"all": None, "timed": None}
        self._open()

    # --- NVML access ---------------------------------------------------------------------------------
    def _open(self):
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError as exc:
            self.error = "libnvidia-ml.so.1 not loadable: %s" % exc
            return
        try:
            lib.nvmlInit_v2.restype = ctypes.c_int
            lib.nvmlDeviceGetHandleByIndex_v2.restype = ctypes.c_int
            lib.nvmlDeviceGetHandleByIndex_v2.argtypes = [ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]
            lib.nvmlDeviceGetMemoryInfo.restype = ctypes.c_int
            lib.nvmlDeviceGetMemoryInfo.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Memory)]
            lib.nvmlShutdown.restype = ctypes.c_int
        except AttributeError as exc:
            self.error = "libnvidia-ml.so.1 lacks an entry point: %s" % exc
            return
        rc = lib.nvmlInit_v2()
        if rc != _NVML_SUCCESS:
            self.error = "nvmlInit_v2 returned %d" % rc
            return
        if self.device_by[0] == "uuid":
            try:
                lib.nvmlDeviceGetHandleByUUID.restype = ctypes.c_int
                lib.nvmlDeviceGetHandleByUUID.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
                rc = lib.nvmlDeviceGetHandleByUUID(self.device_by[1].encode(), ctypes.byref(self._handle))
            except AttributeError:
                rc = -1
            what = "nvmlDeviceGetHandleByUUID(%s)" % self.device_by[1]
        else:
            rc = lib.nvmlDeviceGetHandleByIndex_v2(self.device_index, ctypes.byref(self._handle))
            what = "nvmlDeviceGetHandleByIndex_v2(%d)" % self.device_index
        if rc != _NVML_SUCCESS:
            self.error = "%s returned %d" % (what, rc)
            lib.nvmlShutdown()
            return
        uuid = ctypes.create_string_buffer(96)
        get_uuid = getattr(lib, "nvmlDeviceGetUUID", None)
        if get_uuid is not None:
            get_uuid.restype = ctypes.c_int
            get_uuid.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
            if get_uuid(self._handle, uuid, len(uuid)) == _NVML_SUCCESS:
                self.device_uuid = uuid.value.decode(errors="replace")
        self._procs_fn = getattr(lib, "nvmlDeviceGetComputeRunningProcesses_v3", None)
        if self._procs_fn is not None:
            self._procs_fn.restype = ctypes.c_int
            self._procs_fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint),
                                       ctypes.POINTER(_ProcessInfo)]
        self._lib = lib
        used = self._device_used()
        if used is None:
            self.error = "nvmlDeviceGetMemoryInfo failed"
            self._lib = None
            lib.nvmlShutdown()
            return
        self.baseline_used = used

    @property
    def available(self):
        return self._lib is not None

    def process_used_bytes(self):
        """One reading of this process's usage in bytes (0 when NVML does not list it): for programs that
        watch memory go down, not only its peak (bench/idle_release.py)."""
        return (self._process_used() or 0) if self.available else 0

    def _device_used(self):
        mem = _Memory()
        if self._lib.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(mem)) != _NVML_SUCCESS:
            return None
        return mem.used

    def _process_used(self):
        """Our pid's usage in bytes, or None when NVML does not list it (or cannot say)."""
        if self._procs_fn is None:
            return None
        for _ in range(3):  # the list can grow between the size query and the fill
            count = ctypes.c_uint(self._proc_capacity)
            infos = (_ProcessInfo * self._proc_capacity)()
            rc = self._procs_fn(self._handle, ctypes.byref(count), infos)
            if rc == _NVML_ERROR_INSUFFICIENT_SIZE:
                self._proc_capacity = max(self._proc_capacity * 2, count.value + 8)
                continue
            if rc != _NVML_SUCCESS:
                return None
            found = None
            for i in range(min(count.value, self._proc_capacity)):
                pid = infos[i].pid
                if len(self.pids_seen) < 16:
                    self.pids_seen.add(pid)
                if pid == self.pid and infos[i].usedGpuMemory != _NVML_VALUE_NOT_AVAILABLE:
                    found = (found or 0) + infos[i].usedGpuMemory  # MIG can list a pid more than once
            return found
        return None

    # --- sampling ------------------------------------------------------------------------------------
    def sample(self):
        """One reading; also called from the main thread at phase boundaries."""
        if not self.available:
            return
        t0 = time.perf_counter()
        used = self._device_used()
        proc = self._process_used()
        t1 = time.perf_counter()
        with self._lock:
            self.samples += 1
            self.sample_seconds += t1 - t0
            if self.first_sample_at is None:
                self.first_sample_at = t0
            self.last_sample_at = t0
            windows = ("all", "timed") if self._timed else ("all",)
            for window in windows:
                if used is not None:
                    delta = max(0, used - self.baseline_used)
                    if self.peak_dev[window] is None or delta > self.peak_dev[window]:
                        self.peak_dev[window] = delta
                if proc is not None:
                    if self.peak_proc[window] is None or proc > self.peak_proc[window]:
                        self.peak_proc[window] = proc
            if proc is not None:
                self.proc_samples += 1

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self):
        if self.available and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def begin_timed(self):
        with self._lock:
            self._timed = True
        self.sample()

    def end_timed(self):
        self.sample()
        with self._lock:
            self._timed = False

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        if self._lib is not None:
            self._lib.nvmlShutdown()
            self._lib = None

    # --- results -------------------------------------------------------------------------------------
    def result(self, window="timed"):
        """Fields every workload puts in its JSON line. peak_nvml_gib is the per-process figure when NVML
        listed our pid, else the device delta; nvml_source says which."""
        def gib(value):
            return None if value is None else round(value / GIB, 4)

        with self._lock:
            proc, dev = self.peak_proc[window], self.peak_dev[window]
            span = (self.last_sample_at - self.first_sample_at) if self.samples > 1 else None
            interval_ms = (1000.0 * span / (self.samples - 1)) if span else None
            cost_ms = (1000.0 * self.sample_seconds / self.samples) if self.samples else None
            if proc is not None:
                peak, source = proc, "process"
            elif dev is not None:
                peak, source = dev, "device-delta"
            else:
                peak, source = None, "unavailable"
            return {
                "peak_nvml_gib": gib(peak),
                "nvml_source": source,
                "peak_nvml_process_gib": gib(proc),
                "peak_nvml_device_delta_gib": gib(dev),
                "peak_nvml_process_gib_whole_run": gib(self.peak_proc["all"]),
                "nvml_samples": self.samples,
                "nvml_samples_with_our_pid": self.proc_samples,
                "nvml_mean_interval_ms": None if interval_ms is None else round(interval_ms, 2),
                "nvml_mean_sample_cost_ms": None if cost_ms is None else round(cost_ms, 3),
                "nvml_error": self.error,
                "nvml_device": "%s %s" % self.device_by,
                "nvml_device_uuid": self.device_uuid,
                "nvml_pids_seen": sorted(self.pids_seen) if proc is None else None,
            }


def main():
    import json
    sampler = NvmlPeakSampler()
    if not sampler.available:
        print(json.dumps({"nvml_error": sampler.error}))
        return 1
    sampler.sample()
    out = sampler.result(window="all")
    out["device_used_gib"] = round(sampler.baseline_used / GIB, 4)
    out["device_index"] = sampler.device_index
    sampler.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
