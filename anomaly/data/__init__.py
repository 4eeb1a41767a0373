"""CSV loading, column mapping, standardization and windowing.

A :class:`Series` is one entity's readings in time order: timestamps in epoch seconds (float64), raw feature
values (float64, shape (n, F)) and optional labels. Files are read with pandas (compressed ones too); the
separator (',', ';', tab or '|') is detected from the header line. The README's "Your data" section is the
user-facing contract of this package.

The numeric contract (the same for replay, training and the daemon): a raw value is the float64 nearest to its
decimal text, i.e. what Python's ``float()`` and every correct JSON parser give (pandas before 3.1 needs
``float_precision="round_trip"`` for that). Raw values stay float64 until standardization,
``((raw - mean) / scale).astype(float32)``, the one place they become float32 (the model's dtype). A JSON
message carrying the CSV's decimals therefore scores bit for bit like the replay of that CSV, whatever the
magnitude.

The package, module by module (each public name is also importable from ``anomaly.data``):

- :mod:`.reading`: a file as a frame of cells (decompression, separator, header, skipped lines) and the file
  line of a row for error messages;
- :mod:`.cells`: numeric cells (decimal commas, thousands separators, missing and bad cells);
- :mod:`.times`: the time column as epoch seconds (units, formats, day/month order);
- :mod:`.columns`: features, the columns left out, label columns as 0/1;
- :mod:`.loading`: files to one :class:`Series` per key (:func:`load_series`);
- :mod:`.series`: :class:`Series` and what is done to whole series (merge, missing values, gaps, interval);
- :mod:`.scaling`: standardization (:class:`Scaler`) and windowing.
"""

from __future__ import annotations

from anomaly.data.cells import numeric_column
from anomaly.data.columns import (
    COMPONENTS,
    LABEL_LIKE,
    check_features,
    infer_features,
    label_values,
    non_features,
)
from anomaly.data.loading import frame_to_series, load_series
from anomaly.data.reading import SEPARATORS, detect_separator, plural, quoted, read_frame
from anomaly.data.scaling import Scaler, window_chain
from anomaly.data.series import (
    FALLBACK_MAX_GAP_SECONDS,
    GAP_INTERVALS,
    Screened,
    Series,
    apply_nan_policy,
    counting_features,
    cut_out_labelled,
    default_max_gap,
    fingerprint,
    look_alike_keys,
    merge_keys,
    sampling_interval,
    screen_readings,
    split_at_gaps,
)
from anomaly.data.times import EPOCH_MS_FROM, TIME_UNITS, epoch_seconds, to_epoch_seconds

__all__ = [
    "COMPONENTS",
    "EPOCH_MS_FROM",
    "FALLBACK_MAX_GAP_SECONDS",
    "GAP_INTERVALS",
    "LABEL_LIKE",
    "SEPARATORS",
    "Scaler",
    "Screened",
    "Series",
    "TIME_UNITS",
    "apply_nan_policy",
    "check_features",
    "counting_features",
    "cut_out_labelled",
    "default_max_gap",
    "detect_separator",
    "epoch_seconds",
    "fingerprint",
    "frame_to_series",
    "infer_features",
    "label_values",
    "load_series",
    "look_alike_keys",
    "merge_keys",
    "non_features",
    "numeric_column",
    "plural",
    "quoted",
    "read_frame",
    "sampling_interval",
    "screen_readings",
    "split_at_gaps",
    "to_epoch_seconds",
    "window_chain",
]
