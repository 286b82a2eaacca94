"""The dynamic batch: rays per step follow the number of field samples the sampler makes."""

from __future__ import annotations


def next_ray_count(rays: int, samples: int, target: int, max_rays: int, min_rays: int = 16) -> int:
    """Rays for the next step, after ``rays`` rays gave ``samples`` field samples.

    Grows a tenth of the way to the count that would have given ``target`` samples (smoothed:
    sample counts are noisy), or shrinks to it at once (memory: one oversized step is what an
    out-of-memory error needs). Clamped to [``min_rays``, ``max_rays``].
    """
    wanted = rays * target / max(samples, 1)
    new = min(0.9 * rays + 0.1 * wanted, wanted)
    return int(min(max(new, min_rays), max_rays))
