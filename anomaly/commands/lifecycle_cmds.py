"""export, retrain and promote: the model lifecycle after the first `anomaly train`."""

from __future__ import annotations

from pathlib import Path

import click

from anomaly.commands.common import one_line_errors


def _default_export_path(model: str, fmt: str) -> str:
    p = Path(model)
    return str(p.with_name(p.stem + ("-int8.pt" if fmt == "int8" else ".onnx")))


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["int8", "onnx"]),
    required=True,
    help="int8: dynamic int8 quantisation of the LSTM and linear layers (a bundle the engine loads like any "
    "other); onnx: the stateful step (x, h, c) -> (recon, h, c), validated against PyTorch with onnxruntime.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="File to write.  [default: MODEL-int8.pt or MODEL.onnx next to MODEL]",
)
@one_line_errors
def export_cmd(model: str, fmt: str, out: str | None) -> None:
    """Export a model bundle for CPU scoring as int8 or ONNX."""
    from anomaly.bundle import load_bundle
    from anomaly.export import ONNX_TOLERANCE, export

    bundle = load_bundle(model)
    path, info = export(bundle, fmt, out or _default_export_path(model, fmt))
    click.echo(f"wrote {path} ({fmt}, model version {info['model_version']})")
    if "max_abs_diff" in info:
        click.echo(
            f"validated with onnxruntime: max |ONNX - PyTorch| = {info['max_abs_diff']:.2e} "
            f"(tolerance {ONNX_TOLERANCE:g})"
        )


COMMANDS: list[click.Command] = [export_cmd]
