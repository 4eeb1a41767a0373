"""Backtest plots: a valid, non-trivial PNG per series (no pixel comparisons)."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from anomaly.engine.alerts import alert_id
from anomaly.report import alert_spans, feature_columns, plot_series, safe_name, write_reports

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def results(key: str, n: int = 300, with_label: bool = True, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = 1_700_000_000.0 + np.arange(n)
    score = np.abs(rng.normal(0.5, 0.2, n))
    score[100:140] += 5.0
    frame = pd.DataFrame(
        {
            "key": key,
            "timestamp": t,
            "error": score * 0.01,
            "score": score,
            "threshold": 1.5,
            "anomalous": score > 1.5,
            "alert_open": False,
            "pressure": rng.normal(3.0, 0.1, n),
            "flow": np.sin(np.arange(n) / 10.0) * 30 + 100,
            "constant": 1.0,
        }
    )
    frame.loc[103:150, "alert_open"] = True
    if with_label:
        frame["label"] = 0
        frame.loc[100:139, "label"] = 1
    return frame


ALERTS = [
    {"id": "a@1700000103.0", "key": "a", "status": "open", "start": 1_700_000_103.0, "end": None},
    {
        "id": "a@1700000103.0",
        "key": "a",
        "status": "closed",
        "start": 1_700_000_103.0,
        "end": 1_700_000_150.0,
    },
    {"id": "a@1700000290.0", "key": "a", "status": "open", "start": 1_700_000_290.0, "end": None},
    {"id": "b@1700000000.0", "key": "b", "status": "open", "start": 1_700_000_000.0, "end": None},
]


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 20_000
    image = mpimg.imread(path)
    assert image.shape[:2] == (800, 1400)


def test_one_png_per_key_named_after_the_key(tmp_path):
    frame = pd.concat([results("valve1/0"), results("b", with_label=False, seed=1)], ignore_index=True)
    paths = write_reports(frame, ALERTS, tmp_path / "plots")
    assert [p.name for p in paths] == ["b.png", "valve1_0.png"]
    for p in paths:
        assert_png(p)


def test_plot_series_accepts_shuffled_rows_and_datetime_timestamps(tmp_path):
    frame = results("a").sample(frac=1.0, random_state=0)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    assert_png(plot_series(frame, ALERTS, tmp_path / "a.png", title="custom"))


def test_feature_columns_are_the_numeric_non_result_columns():
    assert feature_columns(results("a")) == ["pressure", "flow", "constant"]


def test_alert_spans_merge_open_and_closed_records_and_extend_open_alerts():
    assert alert_spans(ALERTS, "a", series_end=1_700_000_299.0) == [
        (1_700_000_103.0, 1_700_000_150.0),
        (1_700_000_290.0, 1_700_000_299.0),
    ]
    assert alert_spans(ALERTS, "zzz", series_end=0.0) == []


def test_two_alerts_of_one_key_within_a_millisecond_are_two_spans():
    """One id (``key@start-ms``) for both: before, the second replaced the first, which was never drawn."""
    first, second = 1_700_000_000.0001, 1_700_000_000.0005
    same = alert_id("a", first)
    assert alert_id("a", second) == same
    alerts = [
        {"id": same, "key": "a", "status": "closed", "start": first, "end": first + 1e-5},
        {"id": same, "key": "a", "status": "open", "start": second, "end": None},
    ]
    assert alert_spans(alerts, "a", series_end=second + 1.0) == [
        (first, first + 1e-5),
        (second, second + 1.0),
    ]


def test_safe_name():
    assert safe_name("valve1/0") == "valve1_0"
    assert safe_name("../x") == "x"
    assert safe_name("///") == "series"


def test_missing_columns_and_empty_frames_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks column"):
        plot_series(results("a").drop(columns=["score"]), [], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no rows"):
        plot_series(results("a").iloc[:0], [], tmp_path / "x.png")


def test_rejected_readings_are_shaded_and_the_legend_sits_beside_the_plot(tmp_path, monkeypatch):
    """Issue 9 item 2: the plot did not mark the hole a rejected reading leaves; the legend covered alerts."""
    import matplotlib.pyplot as plt

    seen = {}
    real_close = plt.close

    def keep(fig):
        seen["fig"] = fig
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    frame = results("a")
    frame["rejected"] = ""
    frame.loc[200, "rejected"] = "non_finite"
    plot_series(frame, ALERTS, tmp_path / "a.png")
    top, bottom = seen["fig"].axes
    handles, labels = bottom.get_legend_handles_labels()
    assert "rejected reading" in labels
    shade = handles[labels.index("rejected reading")]
    x0, x1 = shade.get_x(), shade.get_x() + shade.get_width()
    import matplotlib.dates as mdates

    assert (
        mdates.num2date(x0).timestamp() == 1_700_000_199.0
        and mdates.num2date(x1).timestamp() == 1_700_000_201.0
    )
    legend = bottom.get_legend()
    assert legend.get_bbox_to_anchor().x0 >= bottom.get_window_extent().x1  # outside the axes
    assert top.get_yticklabels()[0].get_text().startswith("pressure\n")  # name, mean ± sd


def test_a_sensor_with_no_value_and_a_reading_with_no_time_are_drawn_without_warnings(tmp_path):
    """A sensor whose every reading was refused printed numpy's 'Mean of empty slice' on stderr; a reading
    without a time crashed matplotlib."""
    import warnings

    frame = results("a")
    frame["pressure"] = np.nan
    frame.loc[5, "timestamp"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_png(plot_series(frame, ALERTS, tmp_path / "a.png"))


def test_names_in_a_script_the_font_lacks_are_drawn_without_warnings(tmp_path):
    """Sensor names such as 压力 printed one matplotlib 'Glyph ... missing from font(s) DejaVu Sans' warning, with
    its file and line, per character on a replay's stderr."""
    import warnings

    frame = results("泵-1").rename(columns={"pressure": "压力", "flow": "流量"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_png(plot_series(frame, ALERTS, tmp_path / "a.png"))


def test_a_file_of_200_features_draws_the_12_that_matter_with_a_note(tmp_path, monkeypatch):
    """200 stacked names overlapped into a black smear. Beyond 12 features the top panel draws the ones with
    the highest error share in the key's alerts, then those furthest from their median where points were flagged,
    in file order, and says so; a small file draws every feature as before."""
    import matplotlib.pyplot as plt

    figs = []
    real_close = plt.close

    def keep(fig):
        figs.append(fig)
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    frame = results("a")
    rng = np.random.default_rng(1)
    wide = {f"s{j:03d}": rng.normal(0.0, 1.0, len(frame)) for j in range(200)}
    for j in range(20, 30):  # ten sensors jump where the score is flagged (rows 100-139)
        wide[f"s{j:03d}"][100:140] += 8.0 + j / 10
    frame = pd.concat(
        [
            frame[["key", "timestamp", "error", "score", "threshold", "anomalous", "alert_open"]],
            pd.DataFrame(wide),
        ],
        axis=1,
    )
    alerts = [
        {**ALERTS[1], "top_features": [{"feature": "s150", "share": 0.4}, {"feature": "s007", "share": 0.3}]}
    ]
    plot_series(frame, alerts, tmp_path / "a.png")
    top = figs[-1].axes[0]
    names = [t.get_text().split("\n")[0] for t in top.get_yticklabels()]
    assert names == ["s007", *(f"s{j:03d}" for j in range(20, 30)), "s150"]
    assert top.get_title() == (
        "a: standardized signals\n12 of 200 features drawn: the highest error share in alerts, then the furthest "
        "from their median where flagged (all are in scores.csv)"
    )
    plot_series(results("a"), ALERTS, tmp_path / "small.png")
    top = figs[-1].axes[0]
    assert [t.get_text().split("\n")[0] for t in top.get_yticklabels()] == ["pressure", "flow", "constant"]
    assert top.get_title() == "a: standardized signals"


def test_times_reach_matplotlib_as_one_array_not_one_datetime_at_a_time(tmp_path, monkeypatch) -> None:
    """A replay of 2M readings spent minutes in its plot: zone-aware times went to matplotlib, which converts
    them one datetime object at a time, again at every line and span drawn. Naive UTC times (the axis still
    reads UTC) go through its array path."""
    import matplotlib.dates

    one_by_one = []
    date2num = matplotlib.dates.date2num

    def counting(d):
        a = np.asarray(d)
        if a.dtype == object:
            one_by_one.append(a.size)
        return date2num(d)

    monkeypatch.setattr(matplotlib.dates, "date2num", counting)
    path = plot_series(results("a", n=2000), ALERTS, tmp_path / "a.png")
    assert_png(path)
    # what still comes one by one is a span's ends or the tick marks, never a line's readings (was 2,000 at
    # each of 10 lines)
    assert max(one_by_one) < 100
