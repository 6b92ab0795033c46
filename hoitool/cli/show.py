"""``hoitool show RUN VIDEO_ID --out FIG.png``: one video's frames and boxes with a trained run's graph attention."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hoitool.cli import console
from hoitool.cli.app import app
from hoitool.errors import UsageError


@app.command("show")
def show_command(
    run: Path = typer.Argument(..., help="A global or local run directory (from train-teacher / distill)."),
    video_id: str = typer.Argument(..., help="A video of the run's features store, e.g. syn0042."),
    out: Path = typer.Option(..., "--out", "-o", help="The PNG to write."),
    layer: int = typer.Option(-1, "--layer", help="Which graph layer's attention (-1: the last)."),
    frame: Optional[int] = typer.Option(
        None, "--frame", help="Global view: the sampled frame of the human whose attention is drawn (default: first)."
    ),
) -> None:
    """Draw which boxes each human attends to: per frame (local view) or across frames (global view).

    A ``--method dual_attention`` run: its action and object attention maps on the frames instead.
    """
    from hoitool.eval.attention import attention_figure
    from hoitool.runs import read_run_info
    from hoitool.train.methods import method_info

    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: must name a .png file")
    if method_info(read_run_info(run)).get("name") == "dual_attention":  # its action and object maps instead
        from hoitool.train.methods.dual_attention import attention_maps

        if frame is not None or layer != -1:
            raise UsageError("--frame and --layer choose a graph's attention; a dual-attention run has none")
        attention_maps(run, [video_id], paths=[out])
        console.info(f"wrote {out} (dual attention: the action and the object map on each sampled frame)")
        return
    view = attention_figure(run, video_id, out, layer=layer, frame=frame)
    focus = ", ".join(f"frame {t} box {k}" for t, k in view.focus)
    console.info(f"wrote {out} ({view.view} attention of {focus}; predicted {view.predicted})")
