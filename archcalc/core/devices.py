"""Datasheet peaks of common GPUs, for the roofline and the "fraction of peak" column of `archcalc profile`.

Dense (no 2:4 sparsity) figures from NVIDIA's datasheets and architecture whitepapers. `float16`/`bfloat16` are
tensor-core peaks with FP32 accumulation (what PyTorch's matmuls and cuDNN convolutions use); `tf32` is the
tensor-core peak cuDNN uses for float32 convolutions when `torch.backends.cudnn.allow_tf32` is on (the default);
`float32` is the CUDA-core peak. `None`: the device has no such unit. Bandwidth is the DRAM/HBM figure.
No torch here: `archcalc.torch.profile` passes in the name torch.cuda.get_device_name() reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GIGA = 10**9


@dataclass(frozen=True, slots=True)
class DevicePeak:
    name: str
    pattern: str  # regular expression matched (case-insensitive) against torch.cuda.get_device_name()
    float32: float  # TFLOPS
    tf32: float | None
    float16: float | None
    bfloat16: float | None
    bandwidth_gbs: float  # GB/s (10^9 bytes per second)
    source: str

    def tflops(self, dtype: str, tf32: bool = False) -> tuple[float | None, str]:
        """The peak for `dtype` in TFLOPS and the unit it comes from ('float32', 'tf32', ...)."""
        if dtype == "float32":
            if tf32 and self.tf32 is not None:
                return self.tf32, "tf32"
            return self.float32, "float32"
        return {"float16": self.float16, "bfloat16": self.bfloat16}.get(dtype), dtype

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * GIGA


# More specific patterns first: the first match wins.
DEVICES: tuple[DevicePeak, ...] = (
    DevicePeak("H200 NVL", r"H200.*NVL", 60, 417.5, 835.5, 835.5, 4800, "NVIDIA H200 datasheet (NVL column)"),
    DevicePeak("H200 SXM", r"H200", 67, 494.7, 989.4, 989.4, 4800, "NVIDIA H200 datasheet (SXM column)"),
    DevicePeak("H100 NVL", r"H100.*NVL", 60, 417.5, 835.5, 835.5, 3900, "NVIDIA H100 datasheet (NVL column)"),
    DevicePeak("H100 PCIe", r"H100.*PCIe", 51, 378, 756.5, 756.5, 2000, "NVIDIA H100 datasheet (PCIe column)"),
    DevicePeak("H100 SXM", r"H100", 67, 494.7, 989.4, 989.4, 3350, "NVIDIA H100 datasheet (SXM column)"),
    DevicePeak("A100 SXM4 80GB", r"A100.*SXM.*80", 19.5, 156, 312, 312, 2039, "NVIDIA A100 datasheet"),
    DevicePeak("A100 PCIe 80GB", r"A100.*80.*PCIe|A100.*PCIe.*80", 19.5, 156, 312, 312, 1935,
               "NVIDIA A100 datasheet"),
    DevicePeak("A100 40GB", r"A100", 19.5, 156, 312, 312, 1555, "NVIDIA A100 datasheet (40 GB HBM2)"),
    DevicePeak("V100S PCIe", r"V100S", 16.4, None, 130, None, 1134, "NVIDIA V100 datasheet"),
    DevicePeak("V100 PCIe", r"V100.*PCIe", 14, None, 112, None, 900, "NVIDIA V100 datasheet"),
    DevicePeak("V100 SXM2", r"V100", 15.7, None, 125, None, 900, "NVIDIA V100 datasheet (SXM2 column)"),
    DevicePeak("L40S", r"L40S", 91.6, 183, 362.1, 362.1, 864, "NVIDIA L40S datasheet"),
    DevicePeak("L4", r"\bL4\b", 30.3, 60, 121, 121, 300, "NVIDIA L4 datasheet"),
    DevicePeak("A10", r"\bA10\b", 31.2, 62.5, 125, 125, 600, "NVIDIA A10 datasheet"),
    DevicePeak("T4", r"\bT4\b", 8.1, None, 65, None, 320, "NVIDIA T4 datasheet"),
    DevicePeak("RTX 4090", r"RTX 4090", 82.6, 82.6, 165.2, 165.2, 1008,
               "NVIDIA Ada Lovelace whitepaper, Table 1 (FP16 with FP32 accumulate)"),
    DevicePeak("RTX 3090", r"RTX 3090", 35.6, 35.6, 71, 71, 936,
               "NVIDIA Ampere GA102 whitepaper (FP16 with FP32 accumulate)"),
)


def lookup(device_name: str) -> DevicePeak | None:
    """The datasheet entry for a name as torch.cuda.get_device_name() gives it ('NVIDIA H100 80GB HBM3')."""
    for device in DEVICES:
        if re.search(device.pattern, device_name, re.IGNORECASE):
            return device
    return None
