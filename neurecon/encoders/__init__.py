"""Input encodings. Each maps (N, in_dim) → (N, out_dim) and exposes ``out_dim``."""

from neurecon.encoders.frequency import FrequencyEncoder
from neurecon.encoders.hashgrid import HashGridEncoder
from neurecon.encoders.sh import SphericalHarmonicsEncoder

__all__ = ["FrequencyEncoder", "HashGridEncoder", "SphericalHarmonicsEncoder"]
