"""Float µs since the epoch that test the datetime texts' edges: 2001-2033, half µs (rounded
to even), day boundaries, both sides of the epoch, NaN / inf, the eve of 2100."""

import numpy as np


def datetime_values(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    around = rng.uniform(1.0e15, 2.0e15, 300)  # 2001-2033
    halves = np.floor(around) + 0.5  # half µs: rounded to even, as numpy rounds
    days = np.round(around / 86_400e6) * 86_400e6 + rng.choice([-1.0, 0.0, 1.0, 0.49], 300)
    small = rng.uniform(-3.0e12, 3.0e12, 100)  # both sides of the epoch
    odd = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, 1.5, -0.5, -1.5, 2.5,
                    86_399_999_999.6, 4102444800e6 - 0.4])  # ... 2100-01-01
    values = np.concatenate([around, halves, days, small, odd])
    rng.shuffle(values)
    return values
