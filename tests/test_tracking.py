"""MLflow tracking on a sqlite store under the output folder."""

from __future__ import annotations

from pathlib import Path

from fedrs.tracking import Tracker, default_tracking_uri, flatten, metric_name


def test_flatten_and_metric_names() -> None:
    assert dict(flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]})) == {
        "a.b": 1,
        "a.c.d": "x",
        "e": [1, 2],
    }
    assert metric_name("eval/map@20") == "eval/map_at_20"


def test_run_params_metrics_artifacts_and_resume(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri.startswith("sqlite:////") and uri.endswith("/mlflow.db")
    tracker = Tracker(uri, experiment="t", run_name="r", artifact_root=tmp_path / "artifacts")
    tracker.log_params({"train": {"lr": 0.01}, "rounds": 3})
    for step in (1, 2):
        tracker.log_metrics({"eval/map@20": 0.1 * step, "skip": float("nan")}, step=step)
    config = tmp_path / "config.toml"
    config.write_text("rounds = 3\n")
    tracker.log_artifact(config)
    tracker.end()

    resumed = Tracker(uri, experiment="t", run_id=tracker.run_id)
    resumed.log_params({"rounds": 3})  # already logged: not an error
    resumed.log_metrics({"eval/map@20": 0.3}, step=3)
    resumed.end()

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.data.params == {"train.lr": "0.01", "rounds": "3"}
    assert "skip" not in run.data.metrics
    assert resumed.history("eval/map@20") == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["config.toml"]
    assert run.info.status == "FINISHED"
