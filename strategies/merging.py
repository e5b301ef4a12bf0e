"""Pure merging helpers: casting a float64 aggregate back to its dtype, metrics per key."""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.common import log

from fedrs.errors import InputError

from .replies import METRICS_RECORD_KEY, RejectedReply, pick_record, reply_weight

MetricsAggregationFn = Callable[[list[RecordDict], str], MetricRecord]


def cast_like(value: np.ndarray, dtype: str) -> np.ndarray:
    target = np.dtype(dtype)
    if target.kind in "iub":
        value = np.rint(value)
    return np.asarray(value.astype(target))


def aggregate_metrics_per_key(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted average of each metric over the records that carry it.

    Unlike Flower's ``aggregate_metricrecords`` the records need not share their metric keys:
    a metric only some clients report (``bpp_s1`` from S1 clients) is averaged over those
    clients, weighted by ``weighted_by_key``.  List-valued metrics are averaged elementwise
    (a list whose length differs from the first one seen is skipped).  The weight itself is
    not in the result.  With identical key sets this equals Flower's default.

    Args:
        records: One RecordDict per reply, each holding one MetricRecord with the weight.
        weighted_by_key: The metric holding each reply's weight.

    Returns:
        The aggregated metrics.

    Raises:
        InputError: A record has no MetricRecord or no valid weight.
    """
    sums: dict[str, np.ndarray] = {}
    totals: dict[str, float] = {}
    for index, record in enumerate(records):
        try:
            metrics = pick_record(dict(record.metric_records), METRICS_RECORD_KEY, "MetricRecord")
            weight = reply_weight(metrics, weighted_by_key)
        except RejectedReply as exc:
            raise InputError(f"metrics of reply {index}: {exc.reason}") from exc
        for key, value in metrics.items():
            if key == weighted_by_key:
                continue
            vector = np.asarray(value, dtype=np.float64)
            if key in sums and sums[key].shape != vector.shape:
                log(WARNING, "metric %r has inconsistent lengths across replies; skipped", key)
                continue
            sums[key] = sums.get(key, np.zeros_like(vector)) + weight * vector
            totals[key] = totals.get(key, 0.0) + weight
    out = MetricRecord()
    for key, acc in sums.items():
        mean = acc / totals[key]
        out[key] = [float(v) for v in mean] if mean.ndim else float(mean)
    return out
